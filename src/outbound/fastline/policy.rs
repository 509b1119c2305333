//! What the one-pass check is told: the caller's policy (tenant, marker, bases, the expected
//! type), borrowed from the `Snapshot`, and the limits past which it gives a line back.
use crate::config::Marker;
use crate::state::Snapshot;
use crate::tenancy::Tenant;
use crate::upstream::Upstream;

/// The longest number the one-pass check copies (`-` and 32 digits and a point): longer ones are
/// judged by the strict parser, which refuses magnitudes `f64` cannot hold.
pub(super) const MAX_NUMBER: usize = 34;

/// What one line's check needs to know: the caller's policy (borrowed, so a read builds one
/// without copying anything) and scratch space kept between lines.
pub struct FastLine<'p> {
    /// The type every line must have (`None`: any). A `Subscription` is always Unsure: its
    /// outbound form needs more than cuts.
    pub expected_type: Option<&'p str>,
    pub tenant: &'p Tenant,
    pub system: &'p str,
    /// `tag` or `security`: where the tenant coding must be.
    pub field: &'static str,
    pub upstream_base: &'p str,
    pub external_bases: &'p [String],
    /// Scratch space for one line's cuts, kept between lines.
    pub cuts: Vec<(usize, usize)>,
    /// After an accepted line: where its `resourceType` value and its local id lie in it.
    pub found_type: std::ops::Range<usize>,
    pub found_id: std::ops::Range<usize>,
}

/// Deeper nesting goes the long way.
pub(super) const MAX_DEPTH: usize = 100;

/// Why the fast path gave the line back (it never refuses on its own).
#[derive(Debug, PartialEq, Eq)]
pub struct Unsure;

pub(super) type R<T> = Result<T, Unsure>;

/// The one-pass form of the outbound check for this caller and resource type (`None`: any).
pub fn fast_line<'p>(
    snap: &'p Snapshot,
    tenant: &'p Tenant,
    upstream: &'p Upstream,
    rtype: Option<&'p str>,
) -> FastLine<'p> {
    FastLine {
        expected_type: rtype,
        tenant,
        system: &snap.marking.system,
        field: match snap.marking.marker {
            Marker::Tag => "tag",
            Marker::Security => "security",
        },
        upstream_base: &upstream.base,
        external_bases: &snap.external_bases,
        cuts: Vec::new(),
        found_type: 0..0,
        found_id: 0..0,
    }
}
