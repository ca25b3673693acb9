"""services/monitor: drift, performance, bias and skew monitoring; alerts; on-call webhook subscriptions."""
