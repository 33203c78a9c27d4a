//! Keyset pagination: one page of a listing and the cursor of the next.

use serde::Serialize;

/// A page of `items` and, when more follow, the cursor to pass for the next page.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Page<T, C> {
    pub items: Vec<T>,
    /// Pass back for the next page; `None` on the last.
    pub next_cursor: Option<C>,
}

impl<T, C> Page<T, C> {
    /// The page from rows fetched with `limit + 1`: a row beyond `limit` means another page
    /// follows, starting after the last item kept (its cursor is `cursor_of` that item).
    pub fn from_rows(mut rows: Vec<T>, limit: i64, cursor_of: impl Fn(&T) -> C) -> Self {
        let limit = usize::try_from(limit).unwrap_or(0);
        let next_cursor = if rows.len() > limit {
            rows.truncate(limit);
            rows.last().map(cursor_of)
        } else {
            None
        };
        Self {
            items: rows,
            next_cursor,
        }
    }

    /// The rows a query fetches for a page of `limit`: one more, to tell whether another
    /// page follows.
    pub fn fetch_size(limit: i64) -> i64 {
        limit.saturating_add(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_beyond_the_limit_means_a_next_page_after_the_last_item_kept() {
        let page = Page::from_rows(vec![1, 2, 3], 2, |n| *n);
        assert_eq!((page.items, page.next_cursor), (vec![1, 2], Some(2)));
        let last = Page::from_rows(vec![1, 2], 2, |n| *n);
        assert_eq!((last.items, last.next_cursor), (vec![1, 2], None));
    }
}
