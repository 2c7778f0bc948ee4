"""Self-configuration: the method's rules, the network topology, the memory estimate (plans.json itself is :mod:`toolkit.core.plans`)."""
