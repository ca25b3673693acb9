"""The feature worker's benchmark, `python -m bench.features` (what it measures: __main__.py).

__main__    options and the order of the figures
throughput  figures 1+2: the worker vs the bare loop draining pre-produced events, and their report
freshness   figure 3: ingest ack -> snapshot at a steady rate, and its report
memory      figure 4: the worker's RSS per entity, and its report
profile     `--profile`: py-spy on a separate worker drain, aggregated
harness     what every figure uses: the worker process, fresh topics, the label-join wait, child processes
data        the fraud example's events as Event envelopes, and producing them
bare_loop   the worker's peer: a bare aiokafka consume -> compute -> produce loop (a child process)
per_event   the worker's per-event work outside the worker (the bare loop's and the in-process ceiling's)
http_load   the lean HTTP client the freshness load is sent with
"""
