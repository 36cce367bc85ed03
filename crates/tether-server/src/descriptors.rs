//! The node's open files: the process's limit, raised to its hard limit at start, and how many
//! of them gateway connections may take.
//!
//! Every gateway connection holds one descriptor. When connections take them all, `accept`
//! fails with `EMFILE` on every listener, the HTTP API's included, and the store cannot open a
//! file: a gateway full of clients locks the business out. So the node keeps a reserve for
//! everything else (the API's connections, the store's files, webhooks, Redis, listeners) and
//! lowers `limits.max_connections` to what the limit holds after it; past that, clients are
//! refused with 4102 (`connection_limit`) while the API keeps answering.

use std::io;

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
use tracing::{info, warn};

use crate::config::Limits;

/// The reserve when `limits.fd_reserve` is not set: the larger of this and
/// [`DEFAULT_RESERVE_PERCENT`] of the limit.
pub const MIN_RESERVE: u64 = 64;
/// See [`MIN_RESERVE`].
pub const DEFAULT_RESERVE_PERCENT: u64 = 5;
/// The smallest `limits.fd_reserve` accepted: the node's own descriptors at start (standard
/// streams, listeners, the runtime's and the poller's epoll instances, the store's journal)
/// already take about this many.
pub const MIN_RESERVE_SET: u64 = 32;

/// The process's open-file limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFiles {
    /// The soft limit, which is what `EMFILE` is about.
    pub soft: u64,
    /// The hard limit (`None`: unlimited).
    pub hard: Option<u64>,
    /// The soft limit before [`raise_limit`] raised it.
    pub raised_from: Option<u64>,
}

/// Raises the soft open-file limit to the hard one (idempotent; process-wide). A limit that
/// cannot be raised is kept, with a warning: the node then sizes its connections against it.
pub fn raise_limit() -> OpenFiles {
    let Rlimit { current, maximum } = getrlimit(Resource::Nofile);
    // Linux never reports an unlimited soft NOFILE; should one, `nr_open` caps it anyway.
    let soft = current.unwrap_or(u64::MAX);
    let mut limit = OpenFiles {
        soft,
        hard: maximum,
        raised_from: None,
    };
    let Some(hard) = maximum.filter(|hard| *hard > soft) else {
        return limit;
    };
    let raised = Rlimit {
        current: Some(hard),
        maximum,
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => {
            limit.soft = hard;
            limit.raised_from = Some(soft);
        }
        Err(e) => {
            warn!(soft, hard, error = %io::Error::from(e), "cannot raise the open-file limit")
        }
    }
    limit
}

/// How the open-file limit is shared out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Kept for everything but gateway connections.
    pub reserve: u64,
    /// The gateway's connection limit: the configured one, or lower if the limit does not
    /// hold it.
    pub max_connections: usize,
    /// The configured `max_connections` when it was lowered.
    pub lowered_from: Option<usize>,
}

/// Shares `soft` open files out: the reserve first, gateway connections within the rest.
pub fn budget(limits: &Limits, soft: u64) -> Result<Budget, String> {
    let reserve = limits
        .fd_reserve
        .unwrap_or_else(|| MIN_RESERVE.max(soft / 100 * DEFAULT_RESERVE_PERCENT));
    let fits = soft.saturating_sub(reserve);
    if fits == 0 {
        return Err(format!(
            "the open-file limit ({soft}) leaves no descriptors for gateway connections after \
             the reserve of {reserve} (limits.fd_reserve): raise the limit (ulimit -n, \
             LimitNOFILE=) or lower the reserve"
        ));
    }
    let fits = usize::try_from(fits).unwrap_or(usize::MAX);
    Ok(if limits.max_connections > fits {
        Budget {
            reserve,
            max_connections: fits,
            lowered_from: Some(limits.max_connections),
        }
    } else {
        Budget {
            reserve,
            max_connections: limits.max_connections,
            lowered_from: None,
        }
    })
}

/// Raises the limit, shares it out and says so: `limits.max_connections` comes back as the
/// gateway may use it. A `max_connections` set above what fits is lowered with a warning (the
/// default, 100,000, only with a line of information): the node still starts, with the
/// connections it can hold, rather than refusing to start or failing later with `EMFILE`.
pub fn size(limits: &mut Limits) -> Result<Budget, String> {
    let limit = raise_limit();
    let budget = budget(limits, limit.soft)?;
    // An unlimited hard limit leaves `hard` out.
    info!(
        limit = limit.soft,
        hard = limit.hard,
        raised_from = limit.raised_from,
        reserve = budget.reserve,
        max_connections = budget.max_connections,
        "open-file limit"
    );
    if let Some(configured) = budget.lowered_from {
        let explicit = configured != Limits::default().max_connections;
        let (fits, reserve) = (budget.max_connections, budget.reserve);
        if explicit {
            warn!(
                configured,
                max_connections = fits,
                "limits.max_connections is more than the open-file limit ({}) holds after the \
                 reserve of {reserve}: lowered; raise the limit (LimitNOFILE=, ulimit -n) to \
                 hold more",
                limit.soft
            );
        } else {
            info!(
                max_connections = fits,
                "limits.max_connections sized to the open-file limit ({}) less the reserve of \
                 {reserve}",
                limit.soft
            );
        }
    }
    limits.max_connections = budget.max_connections;
    crate::metrics::open_files(limit.soft, budget.reserve, budget.max_connections);
    Ok(budget)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_connections: usize, fd_reserve: Option<u64>) -> Limits {
        Limits {
            max_connections,
            fd_reserve,
            ..Limits::default()
        }
    }

    #[test]
    fn the_default_reserve_is_64_or_five_percent() {
        let b = budget(&limits(100_000, None), 512).unwrap();
        assert_eq!((b.reserve, b.max_connections), (64, 448));
        assert_eq!(b.lowered_from, Some(100_000));
        let b = budget(&limits(100_000, None), 20_000).unwrap();
        assert_eq!((b.reserve, b.max_connections), (1000, 19_000));
        let b = budget(&limits(100_000, None), 1 << 20).unwrap();
        assert_eq!(b.reserve, (1 << 20) / 100 * 5);
        assert_eq!(b.max_connections, 100_000);
        assert_eq!(b.lowered_from, None);
    }

    #[test]
    fn a_limit_that_fits_is_kept() {
        let b = budget(&limits(300, Some(100)), 512).unwrap();
        assert_eq!(
            (b.reserve, b.max_connections, b.lowered_from),
            (100, 300, None)
        );
        let b = budget(&limits(500, Some(100)), 512).unwrap();
        assert_eq!((b.max_connections, b.lowered_from), (412, Some(500)));
    }

    #[test]
    fn a_limit_below_the_reserve_is_an_error_that_says_what_to_do() {
        let e = budget(&limits(10, None), 64).unwrap_err();
        assert!(e.contains("open-file limit (64)"), "{e}");
        assert!(e.contains("limits.fd_reserve"), "{e}");
    }

    #[test]
    fn a_reserve_too_small_for_the_node_itself_is_a_config_problem() {
        let mut config = crate::Config::for_tests();
        config.limits.fd_reserve = Some(MIN_RESERVE_SET - 1);
        let e = config.validate().unwrap_err().to_string();
        assert!(e.contains("limits.fd_reserve must be at least 32"), "{e}");
        config.limits.fd_reserve = Some(MIN_RESERVE_SET);
        config.validate().expect("valid");
    }

    #[test]
    fn raising_is_idempotent() {
        let first = raise_limit();
        let again = raise_limit();
        assert_eq!(again.soft, first.soft);
        assert_eq!(again.raised_from, None);
        assert_eq!(Some(again.soft), again.hard.or(Some(again.soft)));
    }
}
