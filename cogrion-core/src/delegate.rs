//! [`delegate_store!`](crate::delegate_store): store wrappers without boilerplate.

/// Implements every [`WorkspaceStore`](crate::WorkspaceStore) trait for a wrapper
/// type by forwarding each method to the store in its field `$inner` (an
/// `Arc<dyn WorkspaceStore>`), except the writes a [`BatchWrite`](crate::BatchWrite)
/// names — `commit`, `put_checkpoint`, `acquire` and `release` — which all go
/// through the wrapper's own inherent
/// `async fn write(&self, write: BatchWrite) -> Result<BatchOutcome>`.
///
/// It is how [`GroupCommit`](crate::GroupCommit) is written, and how a host adds
/// metrics, chaos or auditing around any store: wrappers around the trait, not
/// flags inside each implementation.
///
/// ```
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use cogrion_core::{BatchOutcome, BatchWrite, InMemoryStore, Result, WorkspaceStore};
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
        impl $crate::RecordStore for $wrapper {
            async fn get_workspace(
                &self,
                id: &$crate::WorkspaceId,
            ) -> $crate::Result<$crate::Versioned<$crate::WorkspaceRecord>> {
                self.$inner.get_workspace(id).await
            }
            async fn list_workspaces(
                &self,
                query: &$crate::ListQuery,
            ) -> $crate::Result<::std::vec::Vec<$crate::Versioned<$crate::WorkspaceRecord>>> {
                self.$inner.list_workspaces(query).await
            }
            async fn commit(
                &self,
                write: $crate::WorkspaceWrite,
            ) -> $crate::Result<$crate::Committed> {
                self.write($crate::BatchWrite::Commit(write))
                    .await?
                    .into_committed()
            }
            async fn commit_batch(
                &self,
                writes: ::std::vec::Vec<$crate::WorkspaceWrite>,
            ) -> ::std::vec::Vec<$crate::Result<$crate::Committed>> {
                self.$inner.commit_batch(writes).await
            }
            async fn write_batch(
                &self,
                writes: ::std::vec::Vec<$crate::BatchWrite>,
            ) -> ::std::vec::Vec<$crate::Result<$crate::BatchOutcome>> {
                self.$inner.write_batch(writes).await
            }
            async fn purge(
                &self,
                write: $crate::WorkspaceWrite,
                history: $crate::HistoryRetention,
            ) -> $crate::Result<$crate::Purged> {
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
            async fn get_checkpoint(
                &self,
                id: &$crate::WorkspaceId,
                key: &$crate::CheckpointKey,
            ) -> $crate::Result<::std::option::Option<$crate::__private::Value>> {
                self.$inner.get_checkpoint(id, key).await
            }
            async fn put_checkpoint(
                &self,
                id: &$crate::WorkspaceId,
                key: &$crate::CheckpointKey,
                value: $crate::__private::Value,
                fence: $crate::FencingToken,
            ) -> $crate::Result<()> {
                self.write($crate::BatchWrite::PutCheckpoint {
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
        impl $crate::LeaseStore for $wrapper {
            async fn acquire(
                &self,
                workspace: &$crate::WorkspaceId,
                holder: &$crate::HolderId,
                ttl: ::std::time::Duration,
            ) -> $crate::Result<$crate::Lease> {
                self.write($crate::BatchWrite::Acquire {
                    workspace: workspace.clone(),
                    holder: holder.clone(),
                    ttl,
                })
                .await?
                .into_lease()
            }
            async fn renew(
                &self,
                lease: &$crate::Lease,
                ttl: ::std::time::Duration,
            ) -> $crate::Result<$crate::Lease> {
                self.$inner.renew(lease, ttl).await
            }
            async fn release(&self, lease: &$crate::Lease) -> $crate::Result<()> {
                self.write($crate::BatchWrite::Release(lease.clone()))
                    .await?
                    .into_done()
            }
            async fn claim_due(
                &self,
                holder: &$crate::HolderId,
                ttl: ::std::time::Duration,
                until: $crate::Timestamp,
                limit: usize,
            ) -> $crate::Result<::std::vec::Vec<$crate::Lease>> {
                self.$inner.claim_due(holder, ttl, until, limit).await
            }
            async fn release_all(&self, holder: &$crate::HolderId) -> $crate::Result<u64> {
                self.$inner.release_all(holder).await
            }
        }

        #[$crate::__private::async_trait]
        impl $crate::CommandQueue for $wrapper {
            async fn deliver(
                &self,
                workspace: &$crate::WorkspaceId,
                limit: usize,
                now: $crate::Timestamp,
            ) -> $crate::Result<::std::vec::Vec<$crate::QueuedCommand>> {
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
            ) -> $crate::Result<$crate::QueuedCommand> {
                self.$inner.get_command(workspace, id).await
            }
            async fn withdraw(
                &self,
                workspace: &$crate::WorkspaceId,
                id: &$crate::proto::CommandId,
                now: $crate::Timestamp,
            ) -> $crate::Result<$crate::CommandStatus> {
                self.$inner.withdraw(workspace, id, now).await
            }
        }

        #[$crate::__private::async_trait]
        impl $crate::TokenStore for $wrapper {
            async fn put_token(&self, token: $crate::BootstrapTokenRecord) -> $crate::Result<()> {
                self.$inner.put_token(token).await
            }
            async fn consume(
                &self,
                hash: &$crate::TokenHash,
                workspace: &$crate::WorkspaceId,
                now: $crate::Timestamp,
            ) -> $crate::Result<$crate::BootstrapTokenRecord> {
                self.$inner.consume(hash, workspace, now).await
            }
            async fn exchange(
                &self,
                hash: &$crate::TokenHash,
                credential: $crate::AgentCredential,
                now: $crate::Timestamp,
            ) -> $crate::Result<$crate::AgentCredential> {
                self.$inner.exchange(hash, credential, now).await
            }
        }

        #[$crate::__private::async_trait]
        impl $crate::CredentialStore for $wrapper {
            async fn put_credential(
                &self,
                credential: $crate::AgentCredential,
            ) -> $crate::Result<()> {
                self.$inner.put_credential(credential).await
            }
            async fn get_credential(
                &self,
                serial: &$crate::CertSerial,
            ) -> $crate::Result<$crate::AgentCredential> {
                self.$inner.get_credential(serial).await
            }
            async fn get_credential_for_poll(
                &self,
                serial: &$crate::CertSerial,
            ) -> $crate::Result<($crate::AgentCredential, bool)> {
                self.$inner.get_credential_for_poll(serial).await
            }
            async fn list_credentials(
                &self,
                workspace: &$crate::WorkspaceId,
            ) -> $crate::Result<::std::vec::Vec<$crate::AgentCredential>> {
                self.$inner.list_credentials(workspace).await
            }
            async fn mark_polled(
                &self,
                serial: &$crate::CertSerial,
                now: $crate::Timestamp,
            ) -> $crate::Result<bool> {
                self.$inner.mark_polled(serial, now).await
            }
            async fn renew_credential(
                &self,
                old: &$crate::CertSerial,
                renewed: $crate::AgentCredential,
                now: $crate::Timestamp,
            ) -> $crate::Result<$crate::AgentCredential> {
                self.$inner.renew_credential(old, renewed, now).await
            }
            async fn revoke_all(
                &self,
                workspace: &$crate::WorkspaceId,
                reason: &str,
                now: $crate::Timestamp,
            ) -> $crate::Result<::std::vec::Vec<$crate::CertSerial>> {
                self.$inner.revoke_all(workspace, reason, now).await
            }
        }
    };
}
