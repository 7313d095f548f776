"""The CoLA model card's usage code (shared/seeds/000), every ```python block in order; only the import line
and the model path changed, and two typos fixed (marked)."""
# flake8: noqa
import torch
from transformers import AutoTokenizer
from reinlm.latent.compat import IntentionForCausalLM  # was: from intention import IntentionForCausalLM
# load model and tokenizer
model_path = "__MODEL_PATH__"   # your path
tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=True, use_fast=True)
model = IntentionForCausalLM.from_pretrained(model_path, torch_dtype="auto")   

# The language world model take actions as input and generate the next token.
# In this example, you can try different actions and see how the language world model generates
examples = "I like eating"
# using world model under selected action
action_idx = 3 # choose your action between 0 to 63
inputs = tokenizer(examples, return_tensors='pt')  # typo fixed: the card reads an undefined `prompt`
inputs = {k: v for k, v in inputs.items()}
logits = model.forward_world_model(
    **inputs,
    action_idx=action_idx,
)
next_token = logits[:, -1].argmax(dim=1, keepdim=True)

# The policy model was pretrained according to the training data.
# This example shows the actions of the pre-trained policy
model.set_action_sampling(greedy=False, tau=2.0)  # greedy=True for deterministic action, tau for temperature of action 
prompt = "I like eating"
inputs = tokenizer(prompt, return_tensors='pt')
inputs = {k: v for k, v in inputs.items()}  # intention model
action_logits = model(**inputs, act_mode=True)
action_index = action_logits[:, -1].argmax(dim=1, keepdim=True)  # typo fixed: the card has `[, -1]`

# This example uses the CoLA as a common LLM for language generation.
model.set_action_sampling(greedy=False, tau=2.0)  # greedy=True for deterministic action, tau for temperature of action 
prompt = "I like eating"
inputs = tokenizer(prompt, return_tensors='pt')
inputs = {k: v for k, v in inputs.items()}  # intention model

with torch.no_grad():
    model.reset_action_info()
    outputs = model.generate(
        **inputs,
        use_cache=True,
        max_new_tokens=8,
        do_sample=False,
        top_p=1.0,
        early_stopping=True,
        num_beams=1,
        temperature=0.1,
        repetition_penalty=1.0,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    action_idx, _ = model.get_action_info(prob=True)
    action_idx = action_idx.reshape(-1).numpy().tolist()  # get action sequence during generation
    model.reset_action_info()
    results = tokenizer.batch_decode(outputs, skip_special_tokens=True)

