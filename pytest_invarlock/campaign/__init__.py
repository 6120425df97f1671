"""Pure campaign logic: suite files, items and their kinds, judging a verdict against its expectation, presets. No torch, no I/O beyond reading suite YAML."""
