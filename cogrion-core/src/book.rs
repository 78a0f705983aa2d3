//! The crate's guide, one chapter per module. These modules hold only
//! documentation.

#[doc = include_str!("../book/overview.md")]
pub mod overview {}
#[doc = include_str!("../book/lifecycle.md")]
pub mod lifecycle {}
#[doc = include_str!("../book/traits.md")]
pub mod traits {}
#[doc = include_str!("../book/implementing_a_provider.md")]
pub mod implementing_a_provider {}
#[doc = include_str!("../book/testing.md")]
pub mod testing {}
