package dev.fhirfence.hapi;

import ca.uhn.fhir.batch2.jobs.config.Batch2JobsConfig;
import ca.uhn.fhir.batch2.maintenance.JobMaintenanceServiceImpl;
import ca.uhn.fhir.batch2.jobs.export.BulkDataExportProvider;
import ca.uhn.fhir.context.FhirContext;
import ca.uhn.fhir.context.support.IValidationSupport;
import ca.uhn.fhir.jpa.api.config.JpaStorageSettings;
import ca.uhn.fhir.jpa.api.config.ThreadPoolFactoryConfig;
import ca.uhn.fhir.jpa.api.dao.IFhirSystemDao;
import ca.uhn.fhir.jpa.batch2.JpaBatch2Config;
import ca.uhn.fhir.jpa.config.HapiJpaConfig;
import ca.uhn.fhir.jpa.config.r4.JpaR4Config;
import ca.uhn.fhir.jpa.config.util.HapiEntityManagerFactoryUtil;
import ca.uhn.fhir.jpa.model.config.PartitionSettings;
import ca.uhn.fhir.jpa.model.config.SubscriptionSettings;
import ca.uhn.fhir.jpa.provider.JpaCapabilityStatementProvider;
import ca.uhn.fhir.jpa.provider.JpaSystemProvider;
import ca.uhn.fhir.jpa.search.DatabaseBackedPagingProvider;
import ca.uhn.fhir.jpa.subscription.channel.config.SubscriptionChannelConfig;
import ca.uhn.fhir.jpa.subscription.match.config.SubscriptionProcessorConfig;
import ca.uhn.fhir.jpa.subscription.match.deliver.email.IEmailSender;
import ca.uhn.fhir.jpa.subscription.submit.config.SubscriptionSubmitterConfig;
import ca.uhn.fhir.rest.server.RestfulServer;
import ca.uhn.fhir.rest.server.provider.ResourceProviderFactory;
import ca.uhn.fhir.rest.server.util.ISearchParamRegistry;
import jakarta.persistence.EntityManagerFactory;
import java.util.Properties;
import javax.sql.DataSource;
import org.apache.commons.dbcp2.BasicDataSource;
import org.hl7.fhir.dstu2.model.Subscription.SubscriptionChannelType;
import org.springframework.beans.factory.annotation.Value;
import org.springframework.beans.factory.config.BeanPostProcessor;
import org.springframework.beans.factory.config.ConfigurableListableBeanFactory;
import org.springframework.boot.SpringApplication;
import org.springframework.boot.autoconfigure.SpringBootApplication;
import org.springframework.boot.autoconfigure.jdbc.DataSourceAutoConfiguration;
import org.springframework.boot.autoconfigure.orm.jpa.HibernateJpaAutoConfiguration;
import org.springframework.boot.web.servlet.ServletRegistrationBean;
import org.springframework.context.annotation.Bean;
import org.springframework.context.annotation.Import;
import org.springframework.context.annotation.Primary;
import org.springframework.orm.jpa.JpaTransactionManager;
import org.springframework.orm.jpa.LocalContainerEntityManagerFactoryBean;

/**
 * An unmodified HAPI FHIR JPA server (R4, in-memory H2) for fhir-fence's tests and demo.
 *
 * <p>Configuration only: bulk export and rest-hook subscriptions are switched on, nothing
 * enforces tenancy here. Port and base path come from scripts/hapi (server.port, /fhir).
 */
@SpringBootApplication(
    exclude = {DataSourceAutoConfiguration.class, HibernateJpaAutoConfiguration.class},
    excludeName = {
      "org.springframework.boot.autoconfigure.elasticsearch.ElasticsearchRestClientAutoConfiguration",
      "org.springframework.boot.autoconfigure.thymeleaf.ThymeleafAutoConfiguration"
    })
@Import({
  JpaR4Config.class,
  HapiJpaConfig.class,
  ThreadPoolFactoryConfig.class,
  JpaBatch2Config.class,
  Batch2JobsConfig.class,
  SubscriptionSubmitterConfig.class,
  SubscriptionProcessorConfig.class,
  SubscriptionChannelConfig.class
})
public class HapiUpstream {

  public static void main(String[] args) {
    SpringApplication.run(HapiUpstream.class, args);
  }

  /**
   * How often HAPI's batch jobs (bulk export) advance a step. HAPI's default is 60 s, which makes
   * a one-patient export take about four minutes; scripts/hapi passes a shorter interval.
   */
  @Bean
  public static BeanPostProcessor batchMaintenanceInterval(
      @Value("${fhirfence.batch-maintenance-ms:60000}") long millis) {
    return new BeanPostProcessor() {
      @Override
      public Object postProcessBeforeInitialization(Object bean, String name) {
        if (bean instanceof JobMaintenanceServiceImpl maintenance) {
          maintenance.setScheduledJobFrequencyMillis(millis);
        }
        return bean;
      }
    };
  }

  @Bean
  public DataSource dataSource() {
    BasicDataSource ds = new BasicDataSource();
    ds.setDriverClassName("org.h2.Driver");
    ds.setUrl("jdbc:h2:mem:hapi;DB_CLOSE_DELAY=-1");
    ds.setUsername("sa");
    ds.setPassword("");
    ds.setMaxTotal(20);
    return ds;
  }

  @Primary
  @Bean
  public LocalContainerEntityManagerFactoryBean entityManagerFactory(
      DataSource dataSource,
      ConfigurableListableBeanFactory beanFactory,
      FhirContext fhirContext,
      JpaStorageSettings storageSettings) {
    LocalContainerEntityManagerFactoryBean emf =
        HapiEntityManagerFactoryUtil.newEntityManagerFactory(beanFactory, fhirContext, storageSettings);
    emf.setPersistenceUnitName("HAPI_PU");
    emf.setDataSource(dataSource);
    Properties props = new Properties();
    props.put("hibernate.dialect", "ca.uhn.fhir.jpa.model.dialect.HapiFhirH2Dialect");
    props.put("hibernate.hbm2ddl.auto", "update");
    props.put("hibernate.search.enabled", "false");
    props.put("hibernate.format_sql", "false");
    props.put("hibernate.show_sql", "false");
    emf.setJpaProperties(props);
    return emf;
  }

  @Primary
  @Bean
  public JpaTransactionManager transactionManager(EntityManagerFactory emf) {
    JpaTransactionManager tm = new JpaTransactionManager();
    tm.setEntityManagerFactory(emf);
    return tm;
  }

  @Bean
  public FhirContext fhirContext() {
    return FhirContext.forR4Cached();
  }

  @Bean
  public JpaStorageSettings jpaStorageSettings() {
    JpaStorageSettings settings = new JpaStorageSettings();
    // HAPI's defaults otherwise: client-assigned ids ALPHANUMERIC, referential integrity on.
    settings.setAllowExternalReferences(true);
    // `$expunge` (history removed for good), an operator-side setting HAPI leaves off: the
    // operator's `fhir-fence tenant-data purge --expunge` uses it on the tenant's deleted
    // resources. Clients never reach it: fhir-fence refuses `$expunge` (403).
    settings.setExpungeEnabled(true);
    return settings;
  }

  @Bean
  public SubscriptionSettings subscriptionSettings() {
    SubscriptionSettings settings = new SubscriptionSettings();
    settings.addSupportedSubscriptionType(SubscriptionChannelType.RESTHOOK);
    return settings;
  }

  @Bean
  public PartitionSettings partitionSettings() {
    return new PartitionSettings();
  }

  @Bean
  public IEmailSender emailSender() {
    return details -> {};
  }

  @Bean
  public RestfulServer restfulServer(
      IFhirSystemDao<?, ?> systemDao,
      ResourceProviderFactory resourceProviders,
      JpaSystemProvider<?, ?> systemProvider,
      JpaStorageSettings storageSettings,
      ISearchParamRegistry searchParamRegistry,
      IValidationSupport validationSupport,
      DatabaseBackedPagingProvider pagingProvider,
      BulkDataExportProvider bulkDataExportProvider) {
    RestfulServer server = new RestfulServer(systemDao.getContext());
    server.registerProviders(resourceProviders.createProviders());
    server.registerProvider(systemProvider);
    server.registerProvider(bulkDataExportProvider);
    JpaCapabilityStatementProvider capabilities = new JpaCapabilityStatementProvider(
        server, systemDao, storageSettings, searchParamRegistry, validationSupport);
    capabilities.setImplementationDescription("HAPI FHIR R4 (fhir-fence test upstream)");
    server.setServerConformanceProvider(capabilities);
    server.setPagingProvider(pagingProvider);
    return server;
  }

  @Bean
  public ServletRegistrationBean<RestfulServer> fhirServlet(RestfulServer server) {
    ServletRegistrationBean<RestfulServer> registration = new ServletRegistrationBean<>(server, "/fhir/*");
    registration.setLoadOnStartup(1);
    return registration;
  }
}
