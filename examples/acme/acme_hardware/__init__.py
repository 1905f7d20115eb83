"""teeth-agent hardware manager for ACME chassis (an example vendor plugin)."""
