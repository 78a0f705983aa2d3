//! [`delegate_store!`](crate::delegate_store): store wrappers without boilerplate.

/// Implements every [`WorkspaceStore`](crate::store::WorkspaceStore) trait for a wrapper
/// type by forwarding each method to the store in its field `$inner` (an
/// `Arc<dyn WorkspaceStore>`), except the writes a [`BatchWrite`](crate::store::BatchWrite)
/// names — `commit`, `put_checkpoint`, `acquire` and `release` — which all go
/// through the wrapper's own inherent
/// `async fn write(&self, write: BatchWrite) -> Result<BatchOutcome>`.
///
/// It is how [`GroupCommit`](crate::store::GroupCommit) is written, and how a host adds
/// metrics, chaos or auditing around any store: wrappers around the trait, not
/// flags inside each implementation.
///
/// ```
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use cogrion_core::{Result, store::{BatchOutcome, BatchWrite, InMemoryStore, WorkspaceStore}};
///
/// /// Counts commits.
/// #[derive(Debug)]
/// struct Counting { inner: Arc<dyn WorkspaceStore>, commits: AtomicU64 }
///
/// impl Counting {
///     async fn write(&self, write: BatchWrite) -> Result<BatchOutcome> {
///         if matches!(write, BatchWrite::Commit(_)) {
///             self.commits.fetch_add(1, Ordering::Relaxed);
///         }
///         write.apply_alone(self.inner.as_ref()).await
///     }
/// }
/// cogrion_core::delegate_store!(Counting, inner);
///
/// let store: Arc<dyn WorkspaceStore> =
///     Arc::new(Counting { inner: Arc::new(InMemoryStore::new()), commits: AtomicU64::new(0) });
/// # let _ = store;
/// ```
#[macro_export]
macro_rules! delegate_store {
    ($wrapper:ty, $inner:ident) => {
        #[$crate::__private::async_trait]
        impl $crate::store::RecordStore for $wrapper {
            async fn get_workspace(
                &self,
                id: &$crate::WorkspaceId,
            ) -> $crate::Result<$crate::store::Versioned<$crate::store::WorkspaceRecord>> {
                self.$inner.get_workspace(id).await
            }
            async fn list_workspaces(
                &self,
                query: &$crate::store::ListQuery,
            ) -> $crate::Result<
                ::std::vec::Vec<$crate::store::Versioned<$crate::store::WorkspaceRecord>>,
            > {
                self.$inner.list_workspaces(query).await
            }
            async fn commit(
                &self,
                write: $crate::store::WorkspaceWrite,
            ) -> $crate::Result<$crate::store::Committed> {
                self.write($crate::store::BatchWrite::Commit(write))
                    .await?
                    .into_committed()
            }
            async fn commit_batch(
                &self,
                writes: ::std::vec::Vec<$crate::store::WorkspaceWrite>,
            ) -> ::std::vec::Vec<$crate::Result<$crate::store::Committed>> {
                self.$inner.commit_batch(writes).await
            }
            async fn write_batch(
                &self,
                writes: ::std::vec::Vec<$crate::store::BatchWrite>,
            ) -> ::std::vec::Vec<$crate::Result<$crate::store::BatchOutcome>> {
                self.$inner.write_batch(writes).await
            }
            async fn purge(
                &self,
                write: $crate::store::WorkspaceWrite,
                history: $crate::HistoryRetention,
            ) -> $crate::Result<$crate::store::Purged> {
                self.$inner.purge(write, history).await
            }
            async fn read_events(
                &self,
                id: &$crate::WorkspaceId,
                after: $crate::EventSeq,
                limit: usize,
            ) -> $crate::Result<::std::vec::Vec<$crate::EventRecord>> {
                self.$inner.read_events(id, after, limit).await
            }
            async fn list_summaries(
                &self,
                query: &$crate::store::ListQuery,
            ) -> $crate::Result<::std::vec::Vec<$crate::store::WorkspaceSummary>> {
                self.$inner.list_summaries(query).await
            }
            async fn count_workspaces(
                &self,
                query: &$crate::store::ListQuery,
            ) -> $crate::Result<::std::collections::BTreeMap<$crate::StateName, u64>> {
                self.$inner.count_workspaces(query).await
            }
            async fn read_feed(
                &self,
                after: $crate::store::FeedCursor,
                limit: usize,
            ) -> $crate::Result<::std::vec::Vec<$crate::store::FeedEvent>> {
                self.$inner.read_feed(after, limit).await
            }
            async fn feed_head(&self) -> $crate::Result<$crate::store::FeedCursor> {
                self.$inner.feed_head().await
            }
            async fn get_checkpoint(
                &self,
                id: &$crate::WorkspaceId,
                key: &$crate::store::CheckpointKey,
            ) -> $crate::Result<::std::option::Option<$crate::__private::Value>> {
                self.$inner.get_checkpoint(id, key).await
            }
            async fn put_checkpoint(
                &self,
                id: &$crate::WorkspaceId,
                key: &$crate::store::CheckpointKey,
                value: $crate::__private::Value,
                fence: $crate::store::FencingToken,
            ) -> $crate::Result<()> {
                self.write($crate::store::BatchWrite::PutCheckpoint {
                    workspace: id.clone(),
                    key: key.clone(),
                    value,
                    fence,
                })
                .await?
                .into_done()
            }
        }

        #[$crate::__private::async_trait]
        impl $crate::store::LeaseStore for $wrapper {
            async fn acquire(
                &self,
                workspace: &$crate::WorkspaceId,
                holder: &$crate::HolderId,
                ttl: ::std::time::Duration,
            ) -> $crate::Result<$crate::store::Lease> {
                self.write($crate::store::BatchWrite::Acquire {
                    workspace: workspace.clone(),
                    holder: holder.clone(),
                    ttl,
                })
                .await?
                .into_lease()
            }
            async fn renew(
                &self,
                lease: &$crate::store::Lease,
                ttl: ::std::time::Duration,
            ) -> $crate::Result<$crate::store::Lease> {
                self.$inner.renew(lease, ttl).await
            }
            async fn release(&self, lease: &$crate::store::Lease) -> $crate::Result<()> {
                self.write($crate::store::BatchWrite::Release(lease.clone()))
                    .await?
                    .into_done()
            }
            async fn claim_due(
                &self,
                holder: &$crate::HolderId,
                ttl: ::std::time::Duration,
                until: $crate::Timestamp,
                limit: usize,
            ) -> $crate::Result<::std::vec::Vec<$crate::store::Lease>> {
                self.$inner.claim_due(holder, ttl, until, limit).await
            }
            async fn release_all(&self, holder: &$crate::HolderId) -> $crate::Result<u64> {
                self.$inner.release_all(holder).await
            }
        }

        #[$crate::__private::async_trait]
        impl $crate::store::CommandQueue for $wrapper {
            async fn deliver(
                &self,
                workspace: &$crate::WorkspaceId,
                limit: usize,
                now: $crate::Timestamp,
            ) -> $crate::Result<::std::vec::Vec<$crate::store::QueuedCommand>> {
                self.$inner.deliver(workspace, limit, now).await
            }
            async fn answer(
                &self,
                workspace: &$crate::WorkspaceId,
                result: $crate::proto::CommandResult,
                now: $crate::Timestamp,
            ) -> $crate::Result<bool> {
                self.$inner.answer(workspace, result, now).await
            }
            async fn get_command(
                &self,
                workspace: &$crate::WorkspaceId,
                id: &$crate::proto::CommandId,
            ) -> $crate::Result<$crate::store::QueuedCommand> {
                self.$inner.get_command(workspace, id).await
            }
            async fn withdraw(
                &self,
                workspace: &$crate::WorkspaceId,
                id: &$crate::proto::CommandId,
                now: $crate::Timestamp,
            ) -> $crate::Result<$crate::store::CommandStatus> {
                self.$inner.withdraw(workspace, id, now).await
            }
        }

        #[$crate::__private::async_trait]
        impl $crate::store::TokenStore for $wrapper {
            async fn put_token(
                &self,
                token: $crate::store::BootstrapTokenRecord,
            ) -> $crate::Result<()> {
                self.$inner.put_token(token).await
            }
            async fn consume(
                &self,
                hash: &$crate::store::TokenHash,
                workspace: &$crate::WorkspaceId,
                now: $crate::Timestamp,
            ) -> $crate::Result<$crate::store::BootstrapTokenRecord> {
                self.$inner.consume(hash, workspace, now).await
            }
            async fn exchange(
                &self,
                hash: &$crate::store::TokenHash,
                credential: $crate::store::AgentCredential,
                now: $crate::Timestamp,
            ) -> $crate::Result<$crate::store::AgentCredential> {
                self.$inner.exchange(hash, credential, now).await
            }
        }

        #[$crate::__private::async_trait]
        impl $crate::store::CredentialStore for $wrapper {
            async fn put_credential(
                &self,
                credential: $crate::store::AgentCredential,
            ) -> $crate::Result<()> {
                self.$inner.put_credential(credential).await
            }
            async fn get_credential(
                &self,
                serial: &$crate::store::CertSerial,
            ) -> $crate::Result<$crate::store::AgentCredential> {
                self.$inner.get_credential(serial).await
            }
            async fn get_credential_for_poll(
                &self,
                serial: &$crate::store::CertSerial,
            ) -> $crate::Result<($crate::store::AgentCredential, bool)> {
                self.$inner.get_credential_for_poll(serial).await
            }
            async fn list_credentials(
                &self,
                workspace: &$crate::WorkspaceId,
            ) -> $crate::Result<::std::vec::Vec<$crate::store::AgentCredential>> {
                self.$inner.list_credentials(workspace).await
            }
            async fn mark_polled(
                &self,
                serial: &$crate::store::CertSerial,
                now: $crate::Timestamp,
            ) -> $crate::Result<bool> {
                self.$inner.mark_polled(serial, now).await
            }
            async fn renew_credential(
                &self,
                old: &$crate::store::CertSerial,
                renewed: $crate::store::AgentCredential,
                now: $crate::Timestamp,
            ) -> $crate::Result<$crate::store::AgentCredential> {
                self.$inner.renew_credential(old, renewed, now).await
            }
            async fn revoke_all(
                &self,
                workspace: &$crate::WorkspaceId,
                reason: &str,
                now: $crate::Timestamp,
            ) -> $crate::Result<::std::vec::Vec<$crate::store::CertSerial>> {
                self.$inner.revoke_all(workspace, reason, now).await
            }
        }
    };
}
