"""Re-tuning: which studies went stale (age, data, drift, code) and the re-tune sweeps, run by
cron or by the long-running service.
"""
