"""One plain, typed function per stage: ``run_split``, ``run_train``, ... (the CLI only parses)."""
