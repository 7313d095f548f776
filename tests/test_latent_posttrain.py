"""CoLA's post-training (issue 17): action-guided fine-tuning, the double-DQN Q-model, MCTS over latent actions.

Tiny models only (a 2-layer random Llama backbone, K = 8 actions): every test here runs in seconds.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from reinlm.latent.finetune import FinetuneConfig, finetune
from reinlm.latent.model import LatentActionModel
from reinlm.cli.latent_post import train_q
from reinlm.latent.qmodel import QModel, QTrainConfig, double_dqn_loss, double_dqn_targets, terminal_rewards
from reinlm.latent.search import (Budget, LatentSearch, Node, SearchConfig, backup, best_of_n, puct_score,
                                  select_descent, select_frontier, tree_nodes)

DOCS = [
    "I watched this film last night and it was a delight from start to finish.",
    "The director's latest film is a slow, beautiful story about two brothers.",
    "This movie tells the story of a small town and the people who never left it.",
    "I went into this movie expecting very little and came out smiling.",
    "The acting is wooden and the plot makes no sense at all.",
    "A warm and funny film with a great cast and a sharp script.",
    "I saw this film at a festival and the audience loved every minute.",
    "The music is lovely but the second half drags on for far too long.",
    "An honest, moving portrait of a family in trouble.",
    "The special effects are cheap and the dialogue is painful.",
]


@pytest.fixture()
def lam(tiny_latent_dir):
    return LatentActionModel.from_pretrained(tiny_latent_dir)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("fta") / "reviews.jsonl"
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS))
    return path


def _parts(state: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    out: dict[str, dict[str, torch.Tensor]] = {}
    for k, v in state.items():
        out.setdefault(k.split(".")[0], {})[k] = v.detach().clone()
    return out


# ---------------------------------------------------------------------------------------------- fine-tuning

@pytest.mark.parametrize("mode,train,changed", [
    ("fta-i", "world_model", {"world_model", "policy"}),
    ("fta-p", "world_model", {"world_model", "policy"}),
    ("fta-i", "backbone", {"backbone", "policy"}),
    ("fta-p", "both", {"backbone", "world_model", "policy"}),
])
def test_finetune_changes_exactly_the_parts_it_claims(tiny_latent_dir, corpus, tmp_path, mode, train, changed):
    model = LatentActionModel.from_pretrained(tiny_latent_dir)
    before = _parts(model.state_dict())
    out = tmp_path / "fta"
    cfg = FinetuneConfig(latent=str(tiny_latent_dir), data=str(corpus), out=str(out), mode=mode, train=train,
                         epochs=1, bc_epochs=1, batch_size=4, lr=1e-3, backbone_lr=1e-3, max_len=24, progress=False)
    finetune(cfg, lam=model)
    after = _parts(model.state_dict())
    assert set(before) == {"backbone", "idm", "policy", "world_model"}
    for part in before:
        same = [k for k in before[part] if torch.equal(before[part][k], after[part][k])]
        if part in changed:
            assert not same, f"{part}: these tensors did not move: {same[:5]}"
        else:
            assert len(same) == len(before[part]), f"{part} changed but {mode}/{train} does not train it"
    result = json.loads((out / "finetune.json").read_text())
    assert set(result["trained"]) == changed
    assert {"nll_world_model_idm", "bc_top1_accuracy"} <= set(result["after"]["held_out"])
    # the output is a latent model directory; a trained backbone travels with it
    reloaded = LatentActionModel.from_pretrained(out)
    assert (out / "backbone").is_dir() == ("backbone" in changed)
    for k, v in reloaded.state_dict().items():
        assert torch.equal(v, model.state_dict()[k]), k


@pytest.mark.parametrize("mode", ["fta-i", "fta-p"])
def test_finetune_modes_train_under_their_own_actions(tiny_latent_dir, corpus, tmp_path, monkeypatch, mode):
    """Stage 1's actions: fta-i = the frozen IDM's argmax, fta-p = samples of the frozen (pre-fine-tuning) policy.

    The policy is sharpened (output layer x 30) so that its samples mostly equal its own argmax, which agrees
    with the IDM's argmax on few steps: the two modes then give visibly different actions. (fta-p made to use
    the IDM's actions passed all six older finetune tests.)"""
    import copy

    import reinlm.latent.finetune as ft

    model = LatentActionModel.from_pretrained(tiny_latent_dir)
    with torch.no_grad():
        model.policy.out.weight.mul_(30.0)
    policy0 = copy.deepcopy(model.policy).eval()
    seen = []
    inner = ft.lm_loss

    def recording(lam, h, ids, mask, actions):
        seen.append((h.detach().clone(), mask.clone(), actions.clone()))
        return inner(lam, h, ids, mask, actions)

    monkeypatch.setattr(ft, "lm_loss", recording)
    cfg = FinetuneConfig(latent=str(tiny_latent_dir), data=str(corpus), out=str(tmp_path / "o"), mode=mode,
                         epochs=2, bc_epochs=0, batch_size=4, max_len=24, progress=False)
    finetune(cfg, lam=model)
    same_idm = same_pol = n = 0
    with torch.no_grad():
        for h, mask, a in seen:
            valid = (mask[:, :-1] * mask[:, 1:]).bool()  # (B, L-1) steps with a next token
            idm = model.idm_logits_from_hidden(h, mask).argmax(-1)  # the IDM is never trained
            pol = policy0(h, mask)[:, :-1].argmax(-1)
            same_idm += int((a == idm)[valid].sum())
            same_pol += int((a == pol)[valid].sum())
            n += int(valid.sum())
    assert len(seen) == 5 and n > 100  # ceil(2 epochs x 9 training documents / batches of 4)
    if mode == "fta-i":
        assert same_idm == n and same_pol / n < 0.5, (same_pol / n, same_idm / n)  # every step: the IDM's argmax
    else:
        assert same_pol / n > 0.8 and same_idm / n < 0.5, (same_pol / n, same_idm / n)


def test_finetune_bad_input_is_clear(tiny_latent_dir, tmp_path):
    from reinlm.errors import ReinlmError

    with pytest.raises(ReinlmError, match="mode"):
        FinetuneConfig(latent=str(tiny_latent_dir), data="x", mode="fta-x")
    one = tmp_path / "one.txt"
    one.write_text("only one document\n")
    with pytest.raises(ReinlmError, match="at least 2"):
        finetune(FinetuneConfig(latent=str(tiny_latent_dir), data=str(one), out=str(tmp_path / "o"), progress=False))


# ---------------------------------------------------------------------------------------------- double DQN

def test_double_dqn_loss_matches_a_hand_computed_three_step_example():
    # row 0: 3 steps, reward 1 at the end; row 1: 2 steps (padded), reward 0.5 at its last step. gamma = 0.5.
    q = torch.tensor([[[1.0, 2.0], [0.5, 0.3], [0.2, 0.9], [7.0, 7.0]],
                      [[0.1, 0.0], [0.3, 0.2], [5.0, 5.0], [5.0, 5.0]]], requires_grad=True)  # (2, R+1=4, K=2)
    q_tgt = torch.tensor([[[0.0, 0.0], [0.4, 0.6], [0.6, 0.8], [9.0, 9.0]],
                          [[0.0, 0.0], [0.2, 0.9], [1.0, 1.0], [1.0, 1.0]]])
    actions = torch.tensor([[1, 0, 1], [0, 1, 0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    rewards = terminal_rewards(torch.tensor([1.0, 0.5]), mask)
    assert rewards.tolist() == [[0.0, 0.0, 1.0], [0.0, 0.5, 0.0]]
    # by hand: row 0, t=0: argmax_a Q(s1) = 0 (0.5 > 0.3), so y = 0.5 * Q_tgt(s1, 0) = 0.2 (plain DQN would take
    # max Q_tgt(s1) = 0.6); error 2.0 - 0.2 = 1.8. t=1: argmax Q(s2) = 1 -> y = 0.5 * 0.8 = 0.4; error 0.1.
    # t=2: last step, y = 1.0; error -0.1. Row 1, t=0: argmax Q(s1) = 0 -> y = 0.5 * 0.2 = 0.1; error 0.
    # t=1: last real step, y = 0.5; error 0.2 - 0.5 = -0.3. Mean over 5 real steps.
    y = double_dqn_targets(q[:, 1:].detach(), q_tgt[:, 1:], rewards, mask, 0.5)
    assert torch.allclose(y[0], torch.tensor([0.2, 0.4, 1.0]))
    assert torch.allclose(y[1, :2], torch.tensor([0.1, 0.5]))
    loss, stats = double_dqn_loss(q, q_tgt, actions, rewards, mask, 0.5)
    assert loss.item() == pytest.approx((1.8 ** 2 + 0.1 ** 2 + 0.1 ** 2 + 0.0 + 0.3 ** 2) / 5, abs=1e-6)
    loss.backward()
    # the gradient reaches only the taken actions' Q(s_t, a_t) on real steps (targets are constants)
    g = q.grad
    assert g[0, 0, 1].item() == pytest.approx(2 * 1.8 / 5, abs=1e-6) and g[0, 0, 0].item() == 0.0
    assert g[1, 2].abs().sum().item() == 0.0 and g[:, 3].abs().sum().item() == 0.0


def _q_loss_at_zero(rows: list[dict]) -> float:
    """TD loss of a Q-model that outputs 0 everywhere (the start: zero output layer): every target is 0 but the
    last step's, which is the reward, so the loss is sum(reward^2) / (number of steps)."""
    return sum(r["reward"] ** 2 for r in rows) / sum(len(r["actions"]) for r in rows)


def test_train_q_learns_a_reward_the_tiny_model_earns(tiny_latent_dir, tmp_path, lam):
    """target_length:20 (normalised) varies between the tiny model's rollouts, unlike contains_words:the (always
    0, so every TD loss was 0 and the old test passed on a Q-model that learnt nothing)."""
    cfg = QTrainConfig(latent=str(tiny_latent_dir), out=str(tmp_path / "q"), reward="target_length:20,normalize=true",
                       prompts="builtin:reviews", num_prompts=4, samples_per_prompt=4, max_new_tokens=6, epochs=30,
                       batch_size=8, lr=1e-3, target_every=5, held_out_fraction=0.25, progress=False)
    result = train_q(cfg, lam=lam)
    from reinlm.cli.latent_post import format_q_result

    rows = [json.loads(x) for x in (tmp_path / "q" / "rollouts.jsonl").read_text().splitlines()]
    assert len(rows) == 16 and all(len(r["actions"]) == len(r["response_ids"]) for r in rows)
    rewards = [r["reward"] for r in rows]
    # each reward is -|len(completion) - 20| / 20, and they differ: there is something to learn
    assert rewards == [pytest.approx(-abs(len(r["completion"]) - 20) / 20) for r in rows]
    assert len(set(rewards)) >= 4 and max(rewards) - min(rewards) > 0.5
    order = np.random.default_rng(cfg.seed).permutation(16)  # train_q's split: 4 held out, 12 trained on
    held, train = [rows[i] for i in order[:4]], [rows[i] for i in order[4:]]
    before = result["held_out_before"]["td_loss"]
    assert before == pytest.approx(_q_loss_at_zero(held), rel=1e-5) and before > 0.01
    assert result["held_out_before"]["reward_mean"] == pytest.approx(sum(r["reward"] for r in held) / 4, rel=1e-5)
    # learning: on the rollouts it trained on, the TD loss falls to under a tenth of where it started
    train_before, train_after = _q_loss_at_zero(train), result["train_after"]["td_loss"]
    assert train_before > 0.05 and train_after < 0.1 * train_before, (train_before, train_after)
    # and Q at the last step follows the reward there (12 rollouts of 4 prompts; the held-out 4 are too few and
    # a random tiny model gives them nothing in common to generalise from, so no held-out claim is made)
    assert result["train_after"]["corr_last_step"] > 0.3
    assert f"held-out TD loss {before:.4f} -> {result['held_out_after']['td_loss']:.4f}" in format_q_result(result)
    q = QModel.from_pretrained(tmp_path / "q", lam)
    assert q.gamma == 0.99
    # the same rollouts as a JSONL, actions dropped (the IDM labels them)
    path = tmp_path / "scored.jsonl"
    path.write_text("".join(json.dumps({k: r[k] for k in ("prompt", "completion", "reward")}) + "\n" for r in rows))
    res2 = train_q(QTrainConfig(latent=str(tiny_latent_dir), out=str(tmp_path / "q2"), rollouts=str(path), epochs=2,
                                progress=False), lam=lam)
    assert res2["rollouts"]["train"] + res2["rollouts"]["held_out"] == 16
    assert res2["held_out_before"]["reward_mean"] != 0.0  # the file's rewards reached the Q-model


# ---------------------------------------------------------------------------------------------- the tree

def _two_level_tree():
    """root -> A (prior .6, reward .2), B (prior .4, reward .5); then A -> A1 (prior .5, reward 1), A2 (.5, 0)."""
    root = Node([], [], 1.0, width=2)
    A = Node([1], [1], 0.6, width=2, parent=root)
    B = Node([2], [2], 0.4, width=2, parent=root)
    root.children = [A, B]
    backup(A, 0.2)
    backup(B, 0.5)
    A1 = Node([1, 3], [1, 3], 0.5, width=2, parent=A)
    A2 = Node([1, 4], [1, 4], 0.5, width=2, parent=A)
    A.children = [A1, A2]
    backup(A1, 1.0)
    backup(A2, 0.0)
    return root, A, B, A1, A2


def test_backup_and_selection_match_a_hand_worked_two_level_tree():
    root, A, B, A1, A2 = _two_level_tree()
    # backup by hand: root saw 4 rewards (0.2 + 0.5 + 1 + 0 = 1.7), A three (0.2 + 1 + 0 = 1.2)
    assert (root.visits, root.value) == (4, pytest.approx(0.425))
    assert (A.visits, A.value) == (3, pytest.approx(0.4))
    assert (B.visits, B.value, A1.value, A2.value) == (1, 0.5, 1.0, 0.0)
    c = 0.7
    # scores by hand: B = 0.5 + 0.7 * 0.4 * sqrt(4) / 2 = 0.78; A1 = 1 + 0.7 * 0.5 * sqrt(3) / 2 = 1.3031;
    # A2 = 0.3031; A (fully expanded) = 0.4 + 0.7 * 0.6 * 2 / 4 = 0.61
    assert puct_score(B.value, B.prior, root.visits, B.visits, c) == pytest.approx(0.78)
    assert puct_score(A1.value, A1.prior, A.visits, A1.visits, c) == pytest.approx(1.0 + 0.35 * math.sqrt(3) / 2)
    # frontier (CoLA): the best expandable node anywhere -> A1; descent: root's best child is B (0.78 > 0.61)
    assert select_frontier(root, c) is A1
    assert select_descent(root, c) is B
    # with B closed, descent goes through A and picks A1 over A2
    B.terminal = True
    assert select_descent(root, c) is A1
    # a very large c_puct: frontier still prefers A1 (3.17 vs B's 2.5)
    B.terminal = False
    assert select_frontier(root, 5.0) is A1
    for n in (B, A1, A2):
        n.terminal = True
    assert select_frontier(root, c) is None and select_descent(root, c) is None


def _count_world_model_forwards(lam):
    counter = {"n": 0}
    inner = lam.world_model.forward

    def counted(h, action):
        counter["n"] += h.shape[0] * h.shape[1]
        return inner(h, action)

    lam.world_model.forward = counted
    return counter


EARNED = "target_length:20,normalize=true"  # -|len - 20| / 20: differs between the tiny model's texts (unlike
# contains_words:the, which it never writes: search and best-of-N then both scored 0 and any comparison passed)


@pytest.mark.parametrize("budget,use_q", [(40, False), (100, True), (333, True)])
def test_search_never_spends_more_than_its_budget(lam, tmp_path, budget, use_q):
    from reinlm.rewards import parse_reward_spec

    q = QModel.from_policy(lam) if use_q else None  # output layer zero: Q = 0, every TD error is 0
    counter = _count_world_model_forwards(lam)
    cfg = SearchConfig(latent="x", reward=EARNED, budget=budget, max_depth=8, rounds=32,
                       branching_root=3, branching=2, segment_tokens=2, max_segment=3, td_threshold=1e-3)
    reward = parse_reward_spec(EARNED)
    res = LatentSearch(lam, reward, cfg, q).search("The old house")
    assert res.stats["wm_forwards"] == counter["n"] <= budget
    # stopped by the budget only when not even one more child's worst case (at most max_depth) fits
    assert res.stats["stopped_by"] == ("budget" if budget == 40 else "tree exhausted")
    if res.stats["stopped_by"] == "budget":
        assert budget - res.stats["wm_forwards"] < cfg.max_depth
    assert res.stats["rollouts"] >= 3 and len(res.actions) >= 1
    rewards = [c["reward"] for c in res.candidates]
    assert res.reward == max(rewards) and len(set(rewards)) >= 2 and max(rewards) > -1.0
    assert res.reward == pytest.approx(-abs(len(res.text) - 20) / 20)
    # node lengths: segment_tokens without a Q-model; with one, nodes grow while the TD error stays small
    segs = [n.depth - n.parent.depth for n in tree_nodes(res.root)[1:] if not n.terminal]
    assert segs and set(segs) == {cfg.max_segment if use_q else cfg.segment_tokens}
    # best-of-N at the search's spend: from above and from below (within one sample's worst case)
    spent = res.stats["wm_forwards"]
    counter["n"] = 0
    bon = best_of_n(lam, reward, "The old house", spent, cfg.max_depth)
    assert bon["wm_forwards"] == counter["n"] and spent - cfg.max_depth < bon["wm_forwards"] <= spent
    assert bon["n"] >= spent // cfg.max_depth and bon["reward"] >= bon["mean_reward"] > -1.5


def test_a_budget_too_small_for_one_rollout_is_refused(lam, tiny_latent_dir, capsys):
    from reinlm.cli.main import main
    from reinlm.errors import ConfigError, ReinlmError
    from reinlm.rewards import parse_reward_spec

    # budget 7 < max_depth 8: the search could never start one rollout (it used to stop at once and report 0)
    with pytest.raises(ConfigError, match=r"budget: got 7, fewer world-model forwards than one rollout can cost "
                                          r"\(max_depth = 8\); allowed: 0 \(no limit\) or at least 8"):
        SearchConfig(latent="x", reward=EARNED, budget=7, max_depth=8)
    SearchConfig(latent="x", reward=EARNED, budget=8, max_depth=8)
    SearchConfig(latent="x", reward=EARNED, budget=0, max_depth=8)
    assert main(["search", "--latent", str(tiny_latent_dir), "--reward", EARNED, "--budget", "7", "--max-depth",
                 "8", "hi"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "budget: got 7" in err and "at least 8" in err and "Traceback" not in err
    # best-of-N with fewer forwards than one sample drew nothing and returned reward nan; now refused
    with pytest.raises(ReinlmError, match=r"best-of-N: got 7 world-model forwards.*max_new_tokens = 8"):
        best_of_n(lam, parse_reward_spec(EARNED), "The old house", 7, 8)
    assert best_of_n(lam, parse_reward_spec(EARNED), "The old house", 8, 8)["n"] == 1


def test_budget_refuses_an_overrun():
    b = Budget(10)
    b.charge(10)
    with pytest.raises(AssertionError):
        b.charge(1)
    assert Budget(0).remaining == math.inf and Budget(10, 3).remaining == 7


def test_search_cli_compare_best_of_n(tiny_latent_dir, capsys):
    from reinlm.cli.main import main
    from reinlm.cli.search import format_report
    from reinlm.rewards import parse_reward_spec

    rc = main(["search", "--latent", str(tiny_latent_dir), "--reward", EARNED, "--budget", "64", "--max-depth", "6",
               "--compare", "best-of-n", "--prompts", "builtin:reviews", "--num-prompts", "3", "--json"])
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    rows, s = report["prompts"], report["summary"]
    assert s["prompts"] == len(rows) == 3
    score = parse_reward_spec(EARNED)
    for r in rows:
        srch, bon = r["search"], r["best_of_n"]
        # the reported rewards are real scores of the reported texts, not 0 = 0
        for side in (srch, bon):
            assert side["reward"] == pytest.approx(score([srch["prompt"]], [side["text"]])[0], abs=1e-6)
            assert side["reward"] == pytest.approx(-abs(len(side["text"]) - 20) / 20)
        spent = srch["stats"]["wm_forwards"]
        assert spent <= 64 and spent - 6 < bon["wm_forwards"] <= spent and bon["n"] >= 1
    srch_r, bon_r = [r["search"]["reward"] for r in rows], [r["best_of_n"]["reward"] for r in rows]
    assert any(x != 0 for x in srch_r + bon_r) and srch_r != bon_r
    wins = sum(x > y for x, y in zip(srch_r, bon_r))
    ties = sum(x == y for x, y in zip(srch_r, bon_r))
    assert (s["search_wins"], s["ties"], s["best_of_n_wins"]) == (wins, ties, 3 - wins - ties)
    assert s["search_mean_best_reward"] == pytest.approx(sum(srch_r) / 3)
    assert s["best_of_n_mean_best_reward"] == pytest.approx(sum(bon_r) / 3)
    text = format_report(report)
    # the summary line carries the numbers of this run (a fixed label such as "search wins" proves nothing)
    assert (f"mean best reward search {sum(srch_r) / 3:.3f} vs best-of-N {sum(bon_r) / 3:.3f}; search wins {wins}, "
            f"ties {ties}, best-of-N wins {3 - wins - ties}") in text
    for r in rows:
        assert f"search      reward {r['search']['reward']:.3f}" in text
        assert f"best-of-{r['best_of_n']['n']:<3d} reward {r['best_of_n']['reward']:.3f}" in text
    assert main(["search", "--latent", str(tiny_latent_dir), "--reward", EARNED, "--c-puct", "-1", "x"]) == 2
    assert main(["search", "--latent", str(tiny_latent_dir), "--reward", EARNED]) == 2


def test_search_summary_counts_wins_ties_and_losses(lam, monkeypatch):
    """The summary's arithmetic on chosen rewards: one win, one tie, one loss (the run above has no tie)."""
    import reinlm.cli.search as cmd
    import reinlm.latent.search as search

    ours, theirs = iter([0.5, 0.2, 0.3]), iter([0.5, 0.4, 0.1])

    def fake_search(self, prompt, columns=None):
        stats = {"wm_forwards": 12, "seconds": 1.0, "rounds": 1, "nodes": 3, "rollouts": 2, "stopped_by": "budget"}
        return search.SearchResult(prompt, "t", [], next(ours), stats, [])

    monkeypatch.setattr(search.LatentSearch, "search", fake_search)
    monkeypatch.setattr(search, "best_of_n", lambda *a, **k: {"n": 2, "wm_forwards": 10, "reward": next(theirs),
                                                             "text": "b", "actions": [], "mean_reward": 0.0})
    report = cmd.run_search(SearchConfig(latent="x", reward=EARNED, prompts="builtin:reviews", num_prompts=3,
                                            max_depth=6, budget=12, compare="best-of-n"), lam=lam)
    s = report["summary"]
    assert (s["search_wins"], s["ties"], s["best_of_n_wins"]) == (1, 1, 1)
    assert s["search_mean_best_reward"] == pytest.approx(1.0 / 3) and s["best_of_n_mean_best_reward"] == pytest.approx(1.0 / 3)
    assert (s["search_wm_forwards_mean"], s["best_of_n_wm_forwards_mean"]) == (12, 10)
    assert "search wins 1, ties 1, best-of-N wins 1" in cmd.format_report(report)


# ---------------------------------------------------------------------------------------------- the stress test

def test_reward_hacking_bench_runs_both_spaces_without_kl(tiny_latent_dir, tmp_path, capfd):
    from reinlm.cli.main import main

    out = tmp_path / "stress"
    argv = ["bench", "reward-hacking", "--latent", str(tiny_latent_dir), "--seeds", "3", "--reward",
            "contains_words:the", "--steps", "2", "--batch-prompts", "1", "--samples-per-prompt", "2",
            "--max-new-tokens", "4", "--eval-prompts", "1", "--eval-samples", "2", "--out", str(out), "--json"]
    assert main(argv) == 0
    report = json.loads(capfd.readouterr().out)
    assert [(r["space"], r["seed"]) for r in report["runs"]] == [("latent", 3), ("token", 3)]
    for r in report["runs"]:
        assert [s["step"] for s in r["steps"]] == [1, 2]
        assert all(s["perplexity"] and s["perplexity"] > 1 and 0 <= s["distinct_2"] <= 1 for s in r["steps"])
        assert r["ppl_before"] > 1 and "alarm_first_step" in r
        cfg = (out / f"{r['space']}-seed3" / "config.yaml").read_text()
        assert "kl_coef: 0.0" in cfg
    assert set(report["summary"]) == {"latent", "token"} and (out / "reward_hacking.png").is_file()
    from reinlm.bench.reward_hacking import format_report

    text = format_report(report)
    for r in report["runs"]:
        run = out / f"{r['space']}-seed3"
        # the report's figures are the run's own: held-out before/after from train_eval.json, per-step from metrics
        ev = json.loads((run / "train_eval.json").read_text())
        assert (r["reward_before"], r["reward_after"]) == (ev["before"]["reward_mean"], ev["after"]["reward_mean"])
        assert (r["ppl_before"], r["ppl_after"]) == (ev["before"]["perplexity_frozen"], ev["after"]["perplexity_frozen"])
        assert (r["distinct2_before"], r["distinct2_after"]) == (ev["before"]["distinct_2"], ev["after"]["distinct_2"])
        rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        assert [s["reward"] for s in r["steps"]] == [x["reward/mean"] for x in rows]
        ratio = r["ppl_after"] / r["ppl_before"]
        assert f"{r['ppl_before']:.1f} -> {r['ppl_after']:.1f} ({ratio:.2f}x)" in text
        # the verdict recomputed from those numbers
        ok = int(ratio <= 1.5) + int(r["distinct2_after"] >= 0.5 * r["distinct2_before"])
        silent = int(r["alarm_first_step"] is None)
        summary = report["summary"][r["space"]]
        assert summary["perplexity_within_1.5x"] + summary["distinct2_kept_half"] == ok
        assert summary["alarm_silent"] == silent and summary["stable"] == int(ok == 2 and silent)
        assert (f"{r['space']}: perplexity within 1.5x on {summary['perplexity_within_1.5x']}/1 seeds, distinct-2 kept "
                f"half on {summary['distinct2_kept_half']}/1, alarm silent on {silent}/1: stable on "
                f"{summary['stable']}/1") in text
    assert main(argv[:-1] + ["--kl-coef", "0.1"]) == 2


def test_reward_hacking_verdict_by_hand():
    """summarize() on chosen runs: ppl x1.4 passes and x1.6 fails the 1.5x bound; distinct-2 0.3 of 0.6 keeps half,
    0.29 does not; an alarm at any step makes a seed unstable."""
    from reinlm.bench.reward_hacking import format_report, summarize

    def run(space, ppl_after, d2_after, alarm=None):
        return {"space": space, "seed": 0, "ppl_before": 10.0, "ppl_after": ppl_after, "distinct2_before": 0.6,
                "distinct2_after": d2_after, "alarm_first_step": alarm, "alarm_steps": 0 if alarm is None else 2,
                "reward_before": 0.1, "reward_after": 0.5}

    runs = [run("latent", 14.0, 0.3), run("latent", 16.0, 0.3), run("latent", 14.0, 0.29), run("latent", 14.0, 0.1),
            run("token", 14.0, 0.6, 3)]
    s = summarize(runs)
    assert s["latent"] == {"seeds": 4, "perplexity_within_1.5x": 3, "distinct2_kept_half": 2, "alarm_silent": 4,
                           "stable": 1}
    assert s["token"] == {"seeds": 1, "perplexity_within_1.5x": 1, "distinct2_kept_half": 1, "alarm_silent": 0,
                          "stable": 0}
    text = format_report({"runs": runs, "summary": s, "claim": "c", "plot": "p.png"})
    assert "latent: perplexity within 1.5x on 3/4 seeds, distinct-2 kept half on 2/4, alarm silent on 4/4: stable on 1/4" in text
    assert "10.0 -> 16.0 (1.60x)" in text and "step 3 (2 steps)" in text


def test_finetune_separate_held_out_corpus(tiny_latent_dir, corpus, tmp_path, lam):
    held = tmp_path / "held.txt"
    held.write_text("A film about a dog and a boy.\nThe ending made the whole theatre cry.\n")
    cfg = FinetuneConfig(latent=str(tiny_latent_dir), data=str(corpus), held_out_data=str(held), out=str(tmp_path / "o"),
                         epochs=0.5, bc_epochs=0.5, batch_size=5, max_len=16, progress=False)
    finetune(cfg, lam=lam)
    result = json.loads((tmp_path / "o" / "finetune.json").read_text())
    assert result["documents"] == {"train": 10, "held_out": 2}


def test_q_model_and_search_on_the_cola_preset(tiny_lm, tmp_path):
    """The Q-model copies the policy's architecture whatever the preset (cola: no input projection, RoPE)."""
    from reinlm.latent.config import LatentConfig
    from reinlm.rewards import parse_reward_spec

    torch.manual_seed(0)
    lam = LatentActionModel(LatentConfig(backbone="tiny", preset="cola", num_actions=8, idm_layers=1,
                                         policy_layers=1), *tiny_lm)
    q = QModel.from_policy(lam, gamma=0.9)
    torch.nn.init.normal_(q.net.out.weight, std=0.1)
    q.save_pretrained(tmp_path / "q")
    q2 = QModel.from_pretrained(tmp_path / "q", lam)
    h = torch.randn(2, 5, lam.config.hidden_size)
    assert q2(h).shape == (2, 5, 8) and torch.allclose(q2(h), q(h)) and q2.gamma == 0.9
    cfg = SearchConfig(latent="x", reward="contains_words:the", budget=60, max_depth=6, branching_root=2, branching=2)
    res = LatentSearch(lam, parse_reward_spec("contains_words:the"), cfg, q2).search("The old house")
    assert 0 < res.stats["wm_forwards"] <= 60 and res.stats["nodes"] >= 3
