//! Page arithmetic shared by every `/v1` list endpoint.

use super::error::ApiError;
use crate::app::Window;
use serde::Serialize;
use utoipa::ToSchema;

/// Default items per page.
pub const DEFAULT_LIMIT: u64 = 20;
/// Largest allowed `limit`.
pub const MAX_LIMIT: u64 = 100;
/// Largest allowed `page`.
pub const MAX_PAGE: u64 = u32::MAX as u64;

/// The schema of `page`: an integer from 1 to [`MAX_PAGE`] (the bounds
/// [`PageQuery::new`] checks). Query structs keep `Option<u64>` and name
/// this as the parameter's `value_type`.
pub struct PageNumber;

/// The schema of `limit`: an integer from 1 to [`MAX_LIMIT`].
pub struct PageLimit;

fn bounded(max: u64, description: &str) -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
        .minimum(Some(1))
        .maximum(Some(max))
        .description(Some(description))
        .into()
}

impl utoipa::PartialSchema for PageNumber {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        bounded(MAX_PAGE, "Page number, from 1.")
    }
}

impl ToSchema for PageNumber {}

impl utoipa::PartialSchema for PageLimit {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        bounded(MAX_LIMIT, "Items per page (default 20).")
    }
}

impl ToSchema for PageLimit {}

/// A validated `page`/`limit` pair.
#[derive(Debug, Clone, Copy)]
pub struct PageQuery {
    page: u64,
    limit: u64,
}

impl PageQuery {
    /// `page` from 1, `limit` 1-100; anything else is a 400.
    pub fn new(page: Option<u64>, limit: Option<u64>) -> Result<Self, ApiError> {
        let page = page.unwrap_or(1);
        let limit = limit.unwrap_or(DEFAULT_LIMIT);
        if !(1..=MAX_PAGE).contains(&page) {
            return Err(ApiError::BadRequest("invalid_query", "page must be a whole number from 1".into()));
        }
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(ApiError::BadRequest("invalid_query", format!("limit must be between 1 and {MAX_LIMIT}")));
        }
        Ok(Self { page, limit })
    }

    /// The part of the list this page shows.
    pub fn window(&self) -> Window {
        Window { offset: ((self.page - 1) * self.limit) as usize, limit: self.limit as usize }
    }

    /// Wrap one page of items with the counts.
    pub fn page<T>(&self, data: Vec<T>, total: usize) -> Page<T> {
        let total = total as u64;
        Page {
            data,
            pagination: Pagination { total_items: total, total_pages: total.div_ceil(self.limit), current_page: self.page, items_per_page: self.limit },
        }
    }
}

/// One page of a list.
#[derive(Debug, Serialize, ToSchema)]
pub struct Page<T> {
    pub data: Vec<T>,
    pub pagination: Pagination,
}

/// Where a page stands in the whole list.
#[derive(Debug, Serialize, ToSchema)]
pub struct Pagination {
    pub total_items: u64,
    pub total_pages: u64,
    pub current_page: u64,
    pub items_per_page: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic() {
        let q = PageQuery::new(Some(3), Some(10)).unwrap();
        assert_eq!(q.window(), Window { offset: 20, limit: 10 });
        let p = q.page(vec![1, 2, 3], 23);
        assert_eq!((p.pagination.total_pages, p.pagination.current_page, p.pagination.items_per_page), (3, 3, 10));
        assert_eq!(PageQuery::new(None, None).unwrap().page::<u8>(vec![], 0).pagination.total_pages, 0);
        assert_eq!(PageQuery::new(None, None).unwrap().window().limit, 20);
    }

    #[test]
    fn bounds() {
        assert!(PageQuery::new(Some(0), None).is_err());
        assert!(PageQuery::new(None, Some(0)).is_err());
        assert!(PageQuery::new(None, Some(101)).is_err());
        assert!(PageQuery::new(None, Some(100)).is_ok());
    }
}
