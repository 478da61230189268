"""logship's shipper: the agent (task -> spool), the watcher (spool -> store) and the stores."""
