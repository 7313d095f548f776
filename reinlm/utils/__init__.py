"""Shared helpers, one module per theme; import from the module, never copy:

- ``rng``: seeding and RNG snapshots;
- ``devices``: device and dtype names to torch objects, parameter casts;
- ``atomic``: atomic writes of files and directories, cleanup after a kill;
- ``outdir``: output directories checked before heavy work;
- ``jsonio``: JSON and JSONL, reinlm's own logs and users' files;
- ``textfile``: user-supplied text files read as UTF-8 with clear errors;
- ``oserrors``: OS errors (full disk, permissions) in words;
- ``integrity``: whether a checkpoint file is complete;
- ``redact``: secrets removed from text;
- ``chunks``, ``memory``: list chunks, peak resident memory;
- ``distributed``: torch.distributed teardown;
- ``fsdp``: FSDP2 sharding of a model and the collective gathers of its state (``--sharding fsdp``).
"""
