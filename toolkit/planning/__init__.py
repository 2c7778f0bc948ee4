"""Self-configuration: plan dataclasses, the method's rules, the memory estimate."""
