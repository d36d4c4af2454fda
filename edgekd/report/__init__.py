"""report.json (a documented schema CI jobs parse), report.md for people, and the gate."""
