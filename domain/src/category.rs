//! The `PromptCategory` aggregate: a named folder for prompts, unique per tenant.

use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

use crate::governed::{Governed, NameClaims};
use crate::text::DisplayName;

/// Scope of the per-tenant unique category name.
pub const CATEGORY_NAME_SCOPE: &str = "category_name";

#[derive(Debug, Clone, PartialEq)]
pub enum CategoryCommand {
    CreateCategory {
        tenant: String,
        name: DisplayName,
    },
    RenameCategory {
        name: DisplayName,
    },
    /// `prompt_count` is looked up by the caller: a category may be deleted only when empty.
    DeleteCategory {
        prompt_count: u64,
    },
}

/// Stored in `events.event_type` by variant name: never rename one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CategoryEvent {
    CategoryCreated { tenant: String, name: String },
    CategoryRenamed { name: String },
    CategoryDeleted,
}

impl DomainEvent for CategoryEvent {
    fn event_type(&self) -> String {
        match self {
            Self::CategoryCreated { .. } => "CategoryCreated",
            Self::CategoryRenamed { .. } => "CategoryRenamed",
            Self::CategoryDeleted => "CategoryDeleted",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        "1.0.0".to_string()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CategoryError {
    #[error("no such category")]
    NotFound,
    #[error("a category with this id already exists")]
    AlreadyExists,
    #[error("the category still holds {0} prompt(s); move them first")]
    NotEmpty(u64),
}

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromptCategory {
    pub tenant: Option<String>,
    pub name: String,
    pub deleted: bool,
}

impl Aggregate for PromptCategory {
    /// Keys every stored category event: changing it orphans the history.
    const TYPE: &'static str = "prompt_category";
    type Command = CategoryCommand;
    type Event = CategoryEvent;
    type Error = CategoryError;
    type Services = ();

    async fn handle(
        &mut self,
        command: CategoryCommand,
        _: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), CategoryError> {
        match command {
            CategoryCommand::CreateCategory { .. } if self.tenant.is_some() => {
                Err(CategoryError::AlreadyExists)
            }
            CategoryCommand::CreateCategory { tenant, name } => {
                sink.write(
                    CategoryEvent::CategoryCreated {
                        tenant,
                        name: name.as_ref().to_string(),
                    },
                    self,
                )
                .await;
                Ok(())
            }
            _ if self.tenant.is_none() || self.deleted => Err(CategoryError::NotFound),
            CategoryCommand::RenameCategory { name } => {
                if name.as_ref() != self.name {
                    sink.write(
                        CategoryEvent::CategoryRenamed {
                            name: name.as_ref().to_string(),
                        },
                        self,
                    )
                    .await;
                }
                Ok(())
            }
            CategoryCommand::DeleteCategory { prompt_count } if prompt_count > 0 => {
                Err(CategoryError::NotEmpty(prompt_count))
            }
            CategoryCommand::DeleteCategory { .. } => {
                sink.write(CategoryEvent::CategoryDeleted, self).await;
                Ok(())
            }
        }
    }

    fn apply(&mut self, event: CategoryEvent) {
        match event {
            CategoryEvent::CategoryCreated { tenant, name } => {
                self.tenant = Some(tenant);
                self.name = name;
            }
            CategoryEvent::CategoryRenamed { name } => self.name = name,
            CategoryEvent::CategoryDeleted => self.deleted = true,
        }
    }
}

impl Governed for PromptCategory {
    fn tenant(&self) -> Option<&str> {
        self.tenant.as_deref()
    }

    fn name_claims(&self, events: &[CategoryEvent]) -> NameClaims {
        let mut current = self.name.clone();
        let mut claims = NameClaims::default();
        for event in events {
            match event {
                CategoryEvent::CategoryCreated { name, .. } => {
                    claims = claims.claim(CATEGORY_NAME_SCOPE, name);
                    current = name.clone();
                }
                CategoryEvent::CategoryRenamed { name } => {
                    claims = claims.rename(CATEGORY_NAME_SCOPE, &current, name);
                    current = name.clone();
                }
                CategoryEvent::CategoryDeleted => claims = claims.release(CATEGORY_NAME_SCOPE, &current),
            }
        }
        claims
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cqrs_es::test::TestFramework;

    fn created() -> CategoryEvent {
        CategoryEvent::CategoryCreated {
            tenant: "acme".into(),
            name: "Support".into(),
        }
    }

    #[test]
    fn a_category_that_holds_prompts_cannot_be_deleted() {
        TestFramework::<PromptCategory>::with(())
            .given(vec![created()])
            .when(CategoryCommand::DeleteCategory { prompt_count: 2 })
            .then_expect_error(CategoryError::NotEmpty(2));
    }

    #[test]
    fn a_deleted_category_is_gone_and_frees_its_name() {
        TestFramework::<PromptCategory>::with(())
            .given(vec![created(), CategoryEvent::CategoryDeleted])
            .when(CategoryCommand::RenameCategory {
                name: DisplayName::parse("name", "x").unwrap(),
            })
            .then_expect_error(CategoryError::NotFound);
        let mut category = PromptCategory::default();
        category.apply(created());
        let claims = category.name_claims(&[CategoryEvent::CategoryDeleted]);
        assert_eq!(
            claims.released,
            vec![(CATEGORY_NAME_SCOPE, "support".to_string())]
        );
    }
}
