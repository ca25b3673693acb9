"""The peers bench/serving.py measures Loopline serving against (their pinned requirements are the
.txt files here; bench/serving.py builds their virtualenvs under bench/.peers/ on first use)."""
