"""Commands on trained runs, above training: `s4v predict`, `embed`, `search`, `convert-reference` and `info`."""
