"""The model zoo: reference architectures by name with their recipes, and the task-specific networks."""
