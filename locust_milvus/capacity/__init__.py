"""--find-capacity: how much load Milvus holds within an SLO, found by a sweep of open-model steps.

``plan`` checks the options and decides each step's rate and verdict (pure); ``steps`` runs in every process that
runs users (the step's rate, its judged figures); ``driver`` runs the sweep on the master or local runner;
``answer`` turns the steps into the answer line, summary.json's ``capacity`` and the report's section; ``usl``
fits the Universal Scalability Law. Importing this package itself imports nothing.
"""
