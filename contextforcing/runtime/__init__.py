"""What a run has and costs on this machine: CPU threads (`threads`), optional libraries (`extras`), whether a
stream fits the device (`limits`) and the analytic cost of a chunk (`perf`)."""
