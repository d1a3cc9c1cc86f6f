"""Multi-host tests: ranks in network namespaces with their own addresses and hostnames."""
