"""Config dataclasses -> command-line flags and YAML, with one validator, so ``--help``, the docs and the
checks cannot drift. One module per step; the package itself holds no names:

- :mod:`~reinlm.config.schema`: declaring a config: :func:`opt` per field (its help is the field's only
  documentation, its ``lo``/``hi``/``choices`` its only range check) and :class:`Config`, which validates
  every field when an instance is built, from Python, a flag or a YAML file alike;
- :mod:`~reinlm.config.fields`: the flat fields of a config: a field whose type is itself a config
  dataclass is *nested*, its fields flattened into the parent's flags and YAML keys (``--temperature``,
  not ``--sampling-temperature``), so flat names are unique across the nesting (checked);
- :mod:`~reinlm.config.coerce`: one value checked against its type and range, coerced where nothing is lost;
- :mod:`~reinlm.config.flags`: :func:`add_dataclass_args`, the flat fields as ``--kebab-case`` flags;
- :mod:`~reinlm.config.yamlfile`: :func:`load_yaml`, strict YAML files;
- :mod:`~reinlm.config.keys`: YAML keys to flat names: nested mappings, aliases (``opt(aliases=...)`` or a
  class's ``__aliases__``), ``__unsupported__`` keys with their own explanation, an unknown key refused
  naming the closest valid key;
- :mod:`~reinlm.config.build`: :func:`build_config` merges, in increasing priority, field defaults < YAML
  layers < flags given; :func:`config_to_dict` writes the flat form back.
"""
