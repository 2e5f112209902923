//! The two exposition formats: OpenMetrics 1.0 (what prometheus-client
//! writes) and Prometheus' text format 0.0.4 (what `promtool check
//! metrics`, older scrapers and `curl` without an Accept header read),
//! and which one a request's `Accept` header asks for.

/// An exposition format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `application/openmetrics-text; version=1.0.0`.
    OpenMetrics,
    /// `text/plain; version=0.0.4`.
    Text,
}

impl Format {
    /// The response's `Content-Type`.
    #[must_use]
    pub const fn content_type(self) -> &'static str {
        match self {
            Self::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Self::Text => "text/plain; version=0.0.4; charset=utf-8",
        }
    }

    /// The format an `Accept` header prefers: OpenMetrics when it rates
    /// `application/openmetrics-text` (version 1.0.0, or none given) at
    /// least as high as any type the text format answers (`text/plain`,
    /// `text/*`, `*/*`); the text format otherwise, and without a header.
    #[must_use]
    pub fn negotiate(accept: Option<&str>) -> Self {
        let Some(accept) = accept else {
            return Self::Text;
        };
        let (mut open_metrics, mut text) = (0.0_f64, 0.0_f64);
        for range in accept.split(',') {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or("").to_ascii_lowercase();
            let mut q = 1.0;
            let mut version_ok = true;
            for param in parts {
                let (k, v) = param.split_once('=').unwrap_or((param, ""));
                match k.trim().to_ascii_lowercase().as_str() {
                    "q" => q = v.trim().parse().unwrap_or(0.0),
                    "version" => version_ok = v.trim() == "1.0.0",
                    _ => {}
                }
            }
            match media.as_str() {
                "application/openmetrics-text" if version_ok => open_metrics = open_metrics.max(q),
                "text/plain" | "text/*" | "*/*" => text = text.max(q),
                _ => {}
            }
        }
        if open_metrics > 0.0 && open_metrics >= text {
            Self::OpenMetrics
        } else {
            Self::Text
        }
    }
}

/// Prometheus' text format 0.0.4 from OpenMetrics text: the samples are
/// the same; the metadata differs. A counter family `x` is described as
/// `x_total` (its samples' name), an info family `x` as the gauge
/// `x_info`; `# UNIT` and `# EOF` do not exist there.
#[must_use]
pub fn to_text_format(open_metrics: &str) -> String {
    let mut out = String::with_capacity(open_metrics.len());
    let mut help: Option<(&str, &str)> = None;
    for line in open_metrics.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            help = rest.split_once(' ');
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (family, kind) = rest.split_once(' ').unwrap_or((rest, "unknown"));
            let (name, kind) = match kind {
                "counter" => (format!("{family}_total"), "counter"),
                "info" => (format!("{family}_info"), "gauge"),
                "unknown" => (family.to_owned(), "untyped"),
                other => (family.to_owned(), other),
            };
            if let Some((_, text)) = help.take().filter(|(f, _)| *f == family) {
                out.push_str("# HELP ");
                out.push_str(&name);
                out.push(' ');
                out.push_str(text);
                out.push('\n');
            }
            out.push_str("# TYPE ");
            out.push_str(&name);
            out.push(' ');
            out.push_str(kind);
            out.push('\n');
            continue;
        }
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_follows_the_accept_header() {
        // What Prometheus 2.42 sends.
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Format::negotiate(Some(prometheus)), Format::OpenMetrics);
        assert_eq!(Format::negotiate(None), Format::Text);
        assert_eq!(Format::negotiate(Some("*/*")), Format::Text);
        assert_eq!(
            Format::negotiate(Some("text/plain;version=0.0.4")),
            Format::Text
        );
        assert_eq!(
            Format::negotiate(Some("application/openmetrics-text")),
            Format::OpenMetrics
        );
        // Only 0.0.1 of OpenMetrics: we write 1.0.0, so the text format.
        assert_eq!(
            Format::negotiate(Some(
                "application/openmetrics-text; version=0.0.1, */*;q=0.1"
            )),
            Format::Text
        );
        assert_eq!(
            Format::negotiate(Some("text/plain;q=0.9, application/openmetrics-text;q=0.5")),
            Format::Text
        );
        assert_eq!(
            Format::negotiate(Some("application/openmetrics-text;q=0")),
            Format::Text
        );
        assert_eq!(Format::negotiate(Some("garbage;;;=,")), Format::Text);
    }

    #[test]
    fn text_format_renames_counter_and_info_families() {
        let om = "# HELP x Exits.\n# TYPE x counter\nx_total{a=\"1\"} 3\n# HELP i Info.\n# TYPE i info\ni_info{v=\"1\"} 1\n# HELP d_seconds Duration.\n# TYPE d_seconds histogram\n# UNIT d_seconds seconds\nd_seconds_sum 1.5\n# EOF\n";
        assert_eq!(
            to_text_format(om),
            "# HELP x_total Exits.\n# TYPE x_total counter\nx_total{a=\"1\"} 3\n# HELP i_info Info.\n# TYPE i_info gauge\ni_info{v=\"1\"} 1\n# HELP d_seconds Duration.\n# TYPE d_seconds histogram\nd_seconds_sum 1.5\n"
        );
    }
}
