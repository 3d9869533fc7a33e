"""casstore's command line, installed as the package `casstore_cli` (console script `casstore`)."""
