//! weir's reports, rendered: one analysis (its [`weir_analysis::Report`], and for the formats that show every
//! flow, the [`weir_analysis::Analysis`]) to aligned text, Markdown, JSON or the self-contained HTML service
//! map, through [`write_report`]. Sections are [`SectionKind`]s, never titles; `weir diff` renders its own
//! sections with the same text and Markdown renderer ([`render`]).
//!
//! No I/O beyond the writer handed in.

#![deny(missing_docs)]

mod json;
mod text;

use std::io::{self, Write};

use weir_analysis::{Analysis, Report};
use weir_model::Cidr;
use weir_policy::PolicySet;

pub use json::{edge_json, write_analysis_json, write_edges_json};
pub use text::{
    Context, Section, SectionKind, Style, Tone, edge_row, header, human, render, render_report,
    sections, sides, span, take,
};

/// A report's format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Aligned text, colored when asked.
    Text {
        /// ANSI colors.
        color: bool,
    },
    /// Markdown.
    Markdown,
    /// JSON: the summary and every judged flow (`docs/analysis-json.md`).
    Json,
    /// JSON: the edge book, `{"edges":[...]}` as the live API's `GET /api/v1/edges` answers.
    Edges,
    /// The service map as one HTML page.
    Html,
}

impl Format {
    /// Whether the format shows every flow (the analysis must keep them).
    pub fn needs_flows(self) -> bool {
        matches!(self, Format::Json | Format::Html)
    }

    /// Whether the format shows the edge book (the report must keep it).
    pub fn needs_edge_book(self) -> bool {
        self == Format::Edges
    }
}

/// What a report is rendered from.
pub struct Rendering<'a> {
    /// The policy set flows were judged against.
    pub set: &'a PolicySet,
    /// The judged flows (kept when [`Format::needs_flows`]); the report keeps its edge book when
    /// [`Format::needs_edge_book`].
    pub analysis: &'a Analysis,
    /// The findings.
    pub report: &'a Report,
    /// Inputs, snapshots and how the captures read.
    pub context: Context<'a>,
    /// The cluster's address ranges besides the nodes' pod ranges (for the map's suggestions).
    pub cluster_ranges: &'a [Cidr],
}

/// Writes the report in `format`.
pub fn write_report(r: &Rendering<'_>, format: Format, out: &mut dyn Write) -> io::Result<()> {
    match format {
        Format::Json => write_analysis_json(r.set, r.analysis, r.report, r.context.inputs, out),
        Format::Edges => write_edges_json(r.report, out),
        Format::Html => {
            let map = weir_map::build(
                r.set,
                r.analysis,
                r.report,
                r.cluster_ranges,
                &r.context.inputs.join(", "),
            );
            out.write_all(weir_map::offline_page(&map).as_bytes())
        }
        Format::Text { color } => {
            out.write_all(render_report(r.report, &r.context, Style::Text { color }).as_bytes())
        }
        Format::Markdown => {
            out.write_all(render_report(r.report, &r.context, Style::Markdown).as_bytes())
        }
    }
}
