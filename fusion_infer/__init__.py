"""fusion_infer: control-head model, the ``mods=None`` protocol and the TimeConditioningCache."""
