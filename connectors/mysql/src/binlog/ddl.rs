//! What a Query event of the binlog means for the stream: the transaction statements that
//! open and end event groups, the DDL that changes which tables exist or how they look, and
//! statement-logged DML (which a row stream cannot apply). Only the leading words and the
//! table names are read; everything else in a statement is skipped.

/// A table named in a statement: `(database if qualified, table)`.
pub(crate) type Name = (Option<String>, String);

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Statement {
    Begin,
    /// `COMMIT`, or `ROLLBACK` of a group whose changes to non-transactional tables stay.
    Commit,
    /// `XA …`: prepared transactions are not supported.
    Xa,
    Truncate(Name),
    Drop(Vec<Name>),
    DropDatabase(String),
    Rename(Vec<(Name, Name)>),
    /// DDL that may change a table's columns or key.
    Alter(Name),
    Create(Name),
    /// `CREATE OR REPLACE TABLE`: the old table (and its rows) are gone, a new one is there.
    Replace(Name),
    /// A data change logged as a statement (`binlog_format` STATEMENT or MIXED in a session).
    Dml(Option<Name>),
    /// Anything else (savepoints, grants, views, routines, `OPTIMIZE`…): no row changes.
    Other,
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Word(String),
    Quoted(String),
    Dot,
    Comma,
    Other,
}

fn tokens(sql: &str) -> Vec<Token> {
    let chars: Vec<char> = sql.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '/' && chars.get(i + 1) == Some(&'*') {
            // `/*!50100 … */` versioned comments hold SQL the server ran; their words count.
            if chars.get(i + 2) == Some(&'!') {
                i += 3;
                while i < chars.len() && chars[i].is_ascii_digit() {
                    i += 1;
                }
                continue;
            }
            i += 2;
            while i + 1 < chars.len() && !(chars[i] == '*' && chars[i + 1] == '/') {
                i += 1;
            }
            i += 2;
        } else if c == '*' && chars.get(i + 1) == Some(&'/') {
            i += 2;
        } else if (c == '-' && chars.get(i + 1) == Some(&'-')) || c == '#' {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '`' {
            let mut name = String::new();
            i += 1;
            while i < chars.len() {
                if chars[i] == '`' {
                    if chars.get(i + 1) == Some(&'`') {
                        name.push('`');
                        i += 2;
                        continue;
                    }
                    break;
                }
                name.push(chars[i]);
                i += 1;
            }
            i += 1;
            out.push(Token::Quoted(name));
        } else if c == '\'' || c == '"' {
            i += 1;
            while i < chars.len() && chars[i] != c {
                if chars[i] == '\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push(Token::Other);
        } else if c.is_alphanumeric() || c == '_' || c == '$' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_' || chars[i] == '$') {
                i += 1;
            }
            out.push(Token::Word(chars[start..i].iter().collect()));
        } else {
            out.push(match c {
                '.' => Token::Dot,
                ',' => Token::Comma,
                _ => Token::Other,
            });
            i += 1;
        }
    }
    out
}

struct Parser {
    tokens: Vec<Token>,
    at: usize,
}

impl Parser {
    fn peek_word(&self) -> Option<String> {
        match self.tokens.get(self.at) {
            Some(Token::Word(w)) => Some(w.to_ascii_uppercase()),
            _ => None,
        }
    }

    fn word(&mut self, w: &str) -> bool {
        if self.peek_word().as_deref() == Some(w) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn words(&mut self, ws: &[&str]) -> bool {
        let start = self.at;
        for w in ws {
            if !self.word(w) {
                self.at = start;
                return false;
            }
        }
        true
    }

    fn ident(&mut self) -> Option<String> {
        let t = match self.tokens.get(self.at)? {
            Token::Word(w) | Token::Quoted(w) => w.clone(),
            _ => return None,
        };
        self.at += 1;
        Some(t)
    }

    /// `name` or `db.name`.
    fn name(&mut self) -> Option<Name> {
        let first = self.ident()?;
        if self.tokens.get(self.at) == Some(&Token::Dot) {
            self.at += 1;
            let second = self.ident()?;
            return Some((Some(first), second));
        }
        Some((None, first))
    }

    fn comma(&mut self) -> bool {
        if self.tokens.get(self.at) == Some(&Token::Comma) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    /// Skips to the next occurrence of `w` as a word; whether it was found.
    fn skip_to(&mut self, w: &str) -> bool {
        while self.at < self.tokens.len() {
            if self.word(w) {
                return true;
            }
            self.at += 1;
        }
        false
    }
}

/// Classifies one statement.
pub(crate) fn classify(sql: &str) -> Statement {
    let mut p = Parser { tokens: tokens(sql), at: 0 };
    let Some(first) = p.peek_word() else { return Statement::Other };
    p.at += 1;
    match first.as_str() {
        "BEGIN" => Statement::Begin,
        "COMMIT" => Statement::Commit,
        "ROLLBACK" if p.peek_word().as_deref() != Some("TO") => Statement::Commit,
        "XA" => Statement::Xa,
        "TRUNCATE" => {
            p.word("TABLE");
            p.name().map_or(Statement::Other, Statement::Truncate)
        }
        "DROP" => {
            if p.word("TEMPORARY") {
                return Statement::Other;
            }
            if p.word("DATABASE") || p.word("SCHEMA") {
                p.words(&["IF", "EXISTS"]);
                return p.ident().map_or(Statement::Other, Statement::DropDatabase);
            }
            if p.word("TABLE") {
                p.words(&["IF", "EXISTS"]);
                let mut names = Vec::new();
                while let Some(n) = p.name() {
                    names.push(n);
                    if !p.comma() {
                        break;
                    }
                }
                return Statement::Drop(names);
            }
            if p.word("INDEX") && p.ident().is_some() && p.word("ON") {
                return p.name().map_or(Statement::Other, Statement::Alter);
            }
            Statement::Other
        }
        "RENAME" => {
            if !p.word("TABLE") {
                return Statement::Other;
            }
            let mut pairs = Vec::new();
            while let Some(from) = p.name() {
                p.words(&["WAIT"]);
                if !p.word("TO") {
                    break;
                }
                let Some(to) = p.name() else { break };
                pairs.push((from, to));
                if !p.comma() {
                    break;
                }
            }
            Statement::Rename(pairs)
        }
        "ALTER" => {
            p.word("ONLINE");
            p.word("IGNORE");
            if !p.word("TABLE") {
                return Statement::Other;
            }
            p.words(&["IF", "EXISTS"]);
            let Some(name) = p.name() else { return Statement::Other };
            // `ALTER TABLE a …, RENAME [TO|AS] b`
            let mut rest = Parser { tokens: p.tokens[p.at..].to_vec(), at: 0 };
            if rest.skip_to("RENAME")
                && rest.peek_word().as_deref() != Some("COLUMN")
                && rest.peek_word().as_deref() != Some("INDEX")
                && rest.peek_word().as_deref() != Some("KEY")
            {
                if !rest.word("TO") {
                    rest.word("AS");
                }
                if let Some(to) = rest.name() {
                    return Statement::Rename(vec![(name, to)]);
                }
            }
            Statement::Alter(name)
        }
        "CREATE" => {
            let replace = p.words(&["OR", "REPLACE"]);
            if p.word("TEMPORARY") {
                return Statement::Other;
            }
            if p.word("DATABASE") || p.word("SCHEMA") {
                return Statement::Other;
            }
            if p.word("TABLE") {
                p.words(&["IF", "NOT", "EXISTS"]);
                let Some(name) = p.name() else { return Statement::Other };
                return if replace { Statement::Replace(name) } else { Statement::Create(name) };
            }
            let _ = p.word("UNIQUE") || p.word("FULLTEXT") || p.word("SPATIAL");
            if p.word("INDEX") && p.ident().is_some() && p.word("ON") {
                return p.name().map_or(Statement::Other, Statement::Alter);
            }
            Statement::Other
        }
        "INSERT" | "REPLACE" => {
            while p.word("LOW_PRIORITY") || p.word("DELAYED") || p.word("HIGH_PRIORITY") || p.word("IGNORE") {}
            p.word("INTO");
            Statement::Dml(p.name())
        }
        "UPDATE" => {
            while p.word("LOW_PRIORITY") || p.word("IGNORE") {}
            Statement::Dml(p.name())
        }
        "DELETE" => {
            while p.word("LOW_PRIORITY") || p.word("QUICK") || p.word("IGNORE") {}
            if p.word("FROM") { Statement::Dml(p.name()) } else { Statement::Dml(None) }
        }
        "LOAD" => {
            if p.skip_to("INTO") && p.word("TABLE") {
                Statement::Dml(p.name())
            } else {
                Statement::Dml(None)
            }
        }
        _ => Statement::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(db: Option<&str>, t: &str) -> Name {
        (db.map(str::to_string), t.to_string())
    }

    #[test]
    fn reads_the_statements_that_change_tables() {
        assert_eq!(classify("BEGIN"), Statement::Begin);
        assert_eq!(classify("COMMIT"), Statement::Commit);
        assert_eq!(classify("ROLLBACK TO SAVEPOINT a"), Statement::Other);
        assert_eq!(classify("truncate table `shop1`.`orders`"), Statement::Truncate(n(Some("shop1"), "orders")));
        assert_eq!(classify("TRUNCATE orders"), Statement::Truncate(n(None, "orders")));
        assert_eq!(
            classify("DROP TABLE IF EXISTS `t1`,`shop2`.`t 2` /* generated by server */"),
            Statement::Drop(vec![n(None, "t1"), n(Some("shop2"), "t 2")])
        );
        assert_eq!(classify("DROP TEMPORARY TABLE IF EXISTS t"), Statement::Other);
        assert_eq!(classify("drop database shop3"), Statement::DropDatabase("shop3".into()));
        assert_eq!(
            classify("RENAME TABLE a TO b, shop1.c TO shop1.d"),
            Statement::Rename(vec![(n(None, "a"), n(None, "b")), (n(Some("shop1"), "c"), n(Some("shop1"), "d"))])
        );
        assert_eq!(classify("ALTER TABLE `orders` ADD COLUMN x INT DEFAULT 5"), Statement::Alter(n(None, "orders")));
        assert_eq!(classify("alter online table o rename column a to b"), Statement::Alter(n(None, "o")));
        assert_eq!(classify("ALTER TABLE o RENAME TO o2"), Statement::Rename(vec![(n(None, "o"), n(None, "o2"))]));
        assert_eq!(classify("CREATE TABLE IF NOT EXISTS `x` (id int)"), Statement::Create(n(None, "x")));
        assert_eq!(classify("CREATE OR REPLACE TABLE x (id int)"), Statement::Replace(n(None, "x")));
        assert_eq!(classify("create unique index i on shop1.o (a)"), Statement::Alter(n(Some("shop1"), "o")));
        assert_eq!(classify("DROP INDEX i ON o"), Statement::Alter(n(None, "o")));
        assert_eq!(classify("/*!40000 ALTER TABLE `o` DISABLE KEYS */"), Statement::Alter(n(None, "o")));
        assert_eq!(classify("insert into shop1.o values (1)"), Statement::Dml(Some(n(Some("shop1"), "o"))));
        assert_eq!(classify("UPDATE LOW_PRIORITY o SET a = 1"), Statement::Dml(Some(n(None, "o"))));
        assert_eq!(classify("DELETE FROM `o` WHERE 1"), Statement::Dml(Some(n(None, "o"))));
        assert_eq!(classify("GRANT SELECT ON *.* TO x"), Statement::Other);
        assert_eq!(classify("XA START 'x'"), Statement::Xa);
        assert_eq!(classify("# comment\nCREATE TABLE `a``b` (id int)"), Statement::Create(n(None, "a`b")));
    }
}
