"""The evidence a run leaves: a report folder per test, sync-versus-async comparison, CI gates.

One job per module: ``histograms`` records response times and per-second counts and merges them across
processes; ``gates`` parses and judges the ``--check-*`` thresholds; ``summary`` writes the JSON, Markdown and
HTML summaries; ``plots`` draws the PNG charts; ``compare`` builds side-by-side tables (in a run: sync against
async; ``locust-milvus compare``: one folder against another); ``listeners`` is the only module that imports
Locust and registers its event listeners (the locustfile imports it). Importing this package itself imports
nothing, so ``locust-milvus compare`` never loads Locust (whose import monkey-patches the standard library).
"""
