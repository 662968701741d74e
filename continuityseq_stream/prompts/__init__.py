"""Prompts: prompt files, schedules, blends, the live settings and the update channel that
carries live changes from the main process to the producer."""
