//! `page` and `limit` (`ListLimit`: 1-100, default 20) of the list endpoints.

use super::error::{NeevError, NeevResult};
use super::views::Pagination;
use crate::app::Window;
use serde::Deserialize;

/// Default page size.
pub const DEFAULT_LIMIT: i64 = 20;
/// Largest page size.
pub const MAX_LIMIT: i64 = 100;

/// The query of a list endpoint; other parameters are ignored.
#[derive(Debug, Deserialize)]
pub struct PageParams {
    pub page: Option<i64>,
    pub limit: Option<i64>,
}

/// A checked page request.
#[derive(Debug, Clone, Copy)]
pub struct Page {
    page: u64,
    limit: u64,
}

impl Page {
    /// `page` from 1 (a page past the end is empty) and `limit` 1-100;
    /// anything else is a 400.
    pub fn new(q: &PageParams) -> NeevResult<Self> {
        let page = q.page.unwrap_or(1);
        let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
        if page < 1 {
            return Err(NeevError::bad_request("invalid_query", "page must be a whole number from 1"));
        }
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(NeevError::bad_request("invalid_query", format!("limit must be between 1 and {MAX_LIMIT}")));
        }
        Ok(Self { page: page as u64, limit: limit as u64 })
    }

    /// The part of the list this page shows.
    pub fn window(&self) -> Window {
        let offset = (self.page - 1).saturating_mul(self.limit);
        Window { offset: usize::try_from(offset).unwrap_or(usize::MAX), limit: self.limit as usize }
    }

    /// Where this page stands in a list of `total` items.
    pub fn pagination(&self, total: usize) -> Pagination {
        let total = total as u64;
        Pagination { total_items: total, total_pages: total.div_ceil(self.limit), current_page: self.page, items_per_page: self.limit }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_and_arithmetic() {
        let p = |page, limit| Page::new(&PageParams { page, limit });
        assert!(p(Some(0), None).is_err());
        assert!(p(None, Some(0)).is_err());
        assert!(p(None, Some(101)).is_err());
        assert!(p(None, Some(-1)).is_err());
        let page = p(Some(3), Some(10)).unwrap();
        assert_eq!(page.window(), Window { offset: 20, limit: 10 });
        let meta = page.pagination(23);
        assert_eq!((meta.total_items, meta.total_pages, meta.current_page, meta.items_per_page), (23, 3, 3, 10));
        assert_eq!(p(None, None).unwrap().window(), Window { offset: 0, limit: 20 });
        // Far past the end: an empty page, not an overflow.
        assert_eq!(p(Some(i64::MAX), Some(100)).unwrap().window().limit, 100);
    }
}
