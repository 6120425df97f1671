"""Pure verdict logic: Phase 0 math, compiling records into tables and CSVs, rendering. No torch."""
