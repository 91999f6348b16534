"""``relion-spot doctor``: the account and region checked against the settings, before deploy."""
