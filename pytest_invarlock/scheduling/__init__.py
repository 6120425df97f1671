"""Scheduling on the controller: memory plan, GPU inventory (NVML, no CUDA), the pure policy, tasks, placement, the plan table and the xdist adapter. No torch."""
