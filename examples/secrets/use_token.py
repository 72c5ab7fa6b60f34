"""Uses a secret the pool gives it (`aic run … --secret HF_TOKEN`): it is in the
environment like any variable; printed, the job's log shows *** in its place."""
import os

token = os.environ["HF_TOKEN"]
print("HF_TOKEN is", token)
print(f"it has {len(token)} characters and starts with {token[:3]}")
