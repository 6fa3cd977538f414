//! `/v1/secgroups` and `/v1/instances/{instance}/secgroups`.

use crate::{Client, ClientError};
use nimbus_api::{
    CreateSecurityGroup, CreateSecurityRule, SecurityGroupView, SecurityRuleView, SetSecurityGroups,
};

impl Client {
    pub async fn list_secgroups(&self) -> Result<Vec<SecurityGroupView>, ClientError> {
        self.list_all("/v1/secgroups").await
    }

    pub async fn create_secgroup(&self, name: &str) -> Result<SecurityGroupView, ClientError> {
        let req = CreateSecurityGroup { name: name.into() };
        self.post("/v1/secgroups", &req).await
    }

    pub async fn secgroup(&self, name: &str) -> Result<SecurityGroupView, ClientError> {
        self.get(&format!("/v1/secgroups/{name}")).await
    }

    pub async fn delete_secgroup(&self, name: &str) -> Result<(), ClientError> {
        self.delete(&format!("/v1/secgroups/{name}")).await
    }

    pub async fn add_secgroup_rule(
        &self,
        group: &str,
        rule: &CreateSecurityRule,
    ) -> Result<SecurityRuleView, ClientError> {
        self.post(&format!("/v1/secgroups/{group}/rules"), rule)
            .await
    }

    pub async fn delete_secgroup_rule(&self, group: &str, rule: u64) -> Result<(), ClientError> {
        self.delete(&format!("/v1/secgroups/{group}/rules/{rule}"))
            .await
    }

    /// Sets a (running) instance's groups; answers them.
    pub async fn set_instance_secgroups(
        &self,
        instance: &str,
        secgroups: Vec<String>,
    ) -> Result<SetSecurityGroups, ClientError> {
        let req = SetSecurityGroups { secgroups };
        self.put(&format!("/v1/instances/{instance}/secgroups"), &req)
            .await
    }
}
