"""The Report button: the open session as a print-friendly document for the patient's chart."""

from __future__ import annotations

from typing import Any

from bokeh.models.widgets import Button

from tpmap.apps import Download
from tpmap.apps.annotate._context import Context
from tpmap.report import render_html, session_report

__all__ = ["ReportButton"]


class ReportButton:
    """Builds the open session's report (off the event loop) and has the browser save it."""

    def __init__(self, ctx: Context, download: Download) -> None:
        self.ctx = ctx
        self.download = download
        self.button = Button(label="Session report", name="report", width=130)
        self.button.on_click(self.make)

    def make(self) -> None:
        """Write the report of the open session and send it as an HTML file."""
        ctx = self.ctx
        session_id = ctx.state.session_id
        if session_id is None:
            ctx.status.say("Open a session first: the report is of one session.", error=True)
            return

        def work() -> tuple[str, bytes]:
            report = session_report(ctx.store, session_id, user=ctx.user)
            page = render_html(report, ctx.atlas)
            name = f"tpmap-session-{report.session.date:%Y-%m-%d}-{report.patient.code}.html"
            return name, page.encode("utf-8")

        def done(result: tuple[str, bytes]) -> None:
            name, payload = result
            self.download.send(name, payload, "text/html")
            ctx.status.say(f"Report saved as {name}: open it to print it or save it as PDF.")

        ctx.status.say("Writing the session report …")
        ctx.run.submit(work, done, lambda exc: ctx.status.fail(exc, "report"))

    @property
    def layout(self) -> Any:
        """The button."""
        return self.button
