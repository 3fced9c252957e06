"""fusion_train: the FusionOpt optimizer, parameter routing and (later) control-head training."""
