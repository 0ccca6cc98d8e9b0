"""Memory: the planner (where weights and cache live, and the peak that costs) and the offload machinery."""
