//! One `WITH` statement assembled from parts, each part's parameters
//! renumbered as it is appended.

use sqlx::PgConnection;
use sqlx::error::BoxDynError;
use sqlx::postgres::PgArguments;

/// A `WITH` statement assembled from the parts a flush needs. Each part's
/// SQL numbers its parameters from `$1`; they are renumbered as the part is
/// appended, so the parts stay readable on their own. The statement text
/// depends only on which parts are present, so Postgres sees a handful of
/// distinct statements, each prepared once per connection.
#[derive(Default)]
pub(super) struct Statement {
    sql: String,
    arguments: PgArguments,
    bound: usize,
    failed: Option<BoxDynError>,
}

impl Statement {
    pub(super) fn part(
        &mut self,
        name: &str,
        sql: &str,
        bind: impl FnOnce(&mut PgArguments) -> Result<(), BoxDynError>,
    ) {
        self.sql
            .push_str(if self.sql.is_empty() { "WITH " } else { ",\n" });
        self.sql.push_str(name);
        self.sql.push_str(" AS (\n");
        let mut highest = 0;
        let mut rest = sql;
        while let Some(at) = rest.find('$') {
            self.sql.push_str(&rest[..=at]);
            rest = &rest[at + 1..];
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            let number: usize = rest[..digits].parse().unwrap_or(0);
            highest = highest.max(number);
            self.sql.push_str(&(number + self.bound).to_string());
            rest = &rest[digits..];
        }
        self.sql.push_str(rest);
        self.sql.push(')');
        self.bound += highest;
        if self.failed.is_none()
            && let Err(e) = bind(&mut self.arguments)
        {
            self.failed = Some(e);
        }
    }

    pub(super) async fn fetch(
        self,
        conn: &mut PgConnection,
        returning: &str,
    ) -> Result<Vec<(i64, String)>, sqlx::Error> {
        if let Some(e) = self.failed {
            return Err(sqlx::Error::Encode(e));
        }
        let sql = format!("{}\n{returning}", self.sql);
        sqlx::query_as_with(sqlx::AssertSqlSafe(sql), self.arguments)
            .fetch_all(conn)
            .await
    }
}
