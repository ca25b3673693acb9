"""`loopline`: the operator's command line (typer): run the local deployment, check it, replay data,
manage models and alert subscriptions, and write the exploration report."""
