"""Processes: the fork server, receiving workers, the forwarder, the daemon."""
