"""API: what users hold (App, admin, decorators, handles, queues, schedules, testing)."""
