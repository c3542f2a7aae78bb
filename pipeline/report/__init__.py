"""The report: every stage's measured numbers in one Markdown file, one self-contained HTML file and one JSON summary."""
