"""Training losses: logit-adjusted cross-entropy and the auxiliary (contrastive) losses."""
