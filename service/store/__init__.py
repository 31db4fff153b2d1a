"""The prediction and feedback store: schema, migrations, database access and the queue writer.

No Flask here. ``schema`` and ``database`` are also read by training (``mnist-train --feedback``):
the database is, with the model repository, the second thing both programs share.
"""
