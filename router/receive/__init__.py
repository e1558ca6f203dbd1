"""The Storage SCP and the receive stack built on it."""
