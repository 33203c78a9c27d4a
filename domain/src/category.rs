//! The `PromptCategory` aggregate: a named folder for prompts, unique per tenant.

use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

use crate::governed::{Claims, Governed};
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
    /// Refused by the write side while a prompt is in the category (see [`Governed::claims`]).
    DeleteCategory,
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
            CategoryCommand::DeleteCategory => {
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

    /// The category's name, unique per tenant; and prompts may refer to it from its
    /// creation until its deletion, which fails while any does.
    fn claims(&self, events: &[CategoryEvent]) -> Claims {
        let mut current = self.name.clone();
        let mut claims = Claims::default();
        for event in events {
            match event {
                CategoryEvent::CategoryCreated { name, .. } => {
                    claims = claims.claim(CATEGORY_NAME_SCOPE, name).register(Self::TYPE);
                    current = name.clone();
                }
                CategoryEvent::CategoryRenamed { name } => {
                    claims = claims.rename(CATEGORY_NAME_SCOPE, &current, name);
                    current = name.clone();
                }
                CategoryEvent::CategoryDeleted => {
                    claims = claims
                        .release(CATEGORY_NAME_SCOPE, &current)
                        .unregister(Self::TYPE);
                }
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
    fn a_category_is_referable_from_its_creation_until_its_deletion() {
        let claims = PromptCategory::default().claims(&[created()]);
        assert_eq!(claims.registered, vec![PromptCategory::TYPE]);
        let mut category = PromptCategory::default();
        category.apply(created());
        TestFramework::<PromptCategory>::with(())
            .given(vec![created()])
            .when(CategoryCommand::DeleteCategory)
            .then_expect_events(vec![CategoryEvent::CategoryDeleted]);
        let claims = category.claims(&[CategoryEvent::CategoryDeleted]);
        assert_eq!(claims.unregistered, vec![PromptCategory::TYPE]);
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
        let claims = category.claims(&[CategoryEvent::CategoryDeleted]);
        assert_eq!(
            claims.released,
            vec![(CATEGORY_NAME_SCOPE, "support".to_string())]
        );
    }
}
