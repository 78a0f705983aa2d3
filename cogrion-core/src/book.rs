//! The crate's guide, one chapter per module. These modules hold only
//! documentation.

#[doc = include_str!("../book/overview.md")]
pub mod overview {}
#[doc = include_str!("../book/lifecycle.md")]
pub mod lifecycle {}
#[doc = include_str!("../book/traits.md")]
pub mod traits {}
#[doc = include_str!("../book/engine.md")]
pub mod engine {}
#[doc = include_str!("../book/implementing_a_provider.md")]
pub mod implementing_a_provider {}
#[cfg_attr(feature = "conformance", doc = include_str!("../book/testing.md"))]
#[cfg_attr(
    not(feature = "conformance"),
    doc = "# Testing with the conformance suites\n\nThis chapter describes the `conformance` \
           feature; build the docs with `--features conformance` (or `--all-features`) to read it."
)]
pub mod testing {}
