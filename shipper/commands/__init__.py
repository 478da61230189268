"""The `logship` command line and its clients: the composition root of shipper and api."""
